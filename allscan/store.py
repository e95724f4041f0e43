"""The results store: an SQLite file beside the output where each result lands as it is computed.

Scores are keyed by the image's sha256 and the models' manifest digest, so an image
is never scored twice by the same models, whatever its name; file rows are keyed by
path. Every batch is committed before it is reported, so a killed run loses nothing
that was reported, and a rerun picks up where it stopped.
"""

import json
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import datetime, UTC
from pathlib import Path

from allscan.results import ImageResult, Score

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    digest TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    p_all REAL NOT NULL,
    verdict TEXT NOT NULL,
    review INTEGER NOT NULL,
    agreement INTEGER NOT NULL,
    per_model TEXT NOT NULL,
    PRIMARY KEY (digest, sha256)
);
CREATE TABLE IF NOT EXISTS files (
    digest TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    width INTEGER,
    height INTEGER,
    error TEXT NOT NULL DEFAULT '',
    first_path TEXT NOT NULL DEFAULT '',
    heatmap TEXT NOT NULL DEFAULT '',
    seq INTEGER NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (digest, path)
);
"""


def store_path_for(out: Path) -> Path:
    """The store beside an output file: ``results.xlsx`` → ``results.xlsx.allscan.sqlite``."""
    return Path(str(out) + ".allscan.sqlite")


class ResultStore:
    """Durable results for one models digest."""

    def __init__(self, path: Path, digest: str):
        self.path = Path(path)
        self.digest = digest
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score_for(self, sha256: str) -> Score | None:
        """The stored score of an image's content under these models, if any."""
        row = self._db.execute(
            "SELECT p_all, verdict, review, agreement, per_model FROM scores WHERE digest=? AND sha256=?",
            (self.digest, sha256),
        ).fetchone()
        if row is None:
            return None
        return Score(row[0], row[1], bool(row[2]), row[3], json.loads(row[4]))

    def scored_hashes(self) -> frozenset[str]:
        """Every image content already scored by these models."""
        rows = self._db.execute("SELECT sha256 FROM scores WHERE digest=?", (self.digest,)).fetchall()
        return frozenset(r[0] for r in rows)

    def first_path_for(self, sha256: str) -> str | None:
        """The first path stored with this content (to mark later copies as duplicates)."""
        row = self._db.execute(
            "SELECT path FROM files WHERE digest=? AND sha256=? AND error='' ORDER BY seq LIMIT 1",
            (self.digest, sha256),
        ).fetchone()
        return row[0] if row else None

    def add(self, results: Iterable[ImageResult]) -> None:
        """Store a batch of results in one transaction (durable on return)."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._db:
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM files").fetchone()[0]
            for result in results:
                seq += 1
                if result.score is not None:
                    s = result.score
                    self._db.execute(
                        "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (self.digest, result.sha256, s.p_all, s.verdict, int(s.review), s.agreement,
                         json.dumps(s.per_model)),
                    )
                self._db.execute(
                    "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest, path) DO UPDATE SET"
                    " sha256=excluded.sha256, width=excluded.width, height=excluded.height, error=excluded.error,"
                    " first_path=excluded.first_path, heatmap=excluded.heatmap, recorded_at=excluded.recorded_at",
                    (self.digest, str(result.path), result.sha256, result.width, result.height, result.error,
                     result.duplicate_of, result.heatmap, seq, now),
                )

    def results(self, paths: Iterable[Path] | None = None) -> Iterator[ImageResult]:
        """Stored results, in path order; only ``paths`` when given."""
        wanted = None if paths is None else {str(p) for p in paths}
        rows = self._db.execute(
            "SELECT f.path, f.sha256, f.width, f.height, f.error, s.p_all, s.verdict, s.review, s.agreement,"
            " s.per_model, f.first_path, f.heatmap FROM files f"
            " LEFT JOIN scores s ON s.digest=f.digest AND s.sha256=f.sha256 AND f.error=''"
            " WHERE f.digest=? ORDER BY f.path",
            (self.digest,),
        )
        for path, sha, width, height, error, p_all, verdict, review, agreement, per_model, first, heatmap in rows:
            if wanted is not None and path not in wanted:
                continue
            score = None
            if not error and p_all is not None:
                score = Score(p_all, verdict, bool(review), agreement, json.loads(per_model))
            yield ImageResult(Path(path), sha, width, height, score, error, first, heatmap)

    def has_path(self, path: Path, sha256: str | None = None) -> bool:
        """Whether ``path`` already has a row under these models (for this content, when given)."""
        query = "SELECT 1 FROM files WHERE digest=? AND path=?"
        args: tuple = (self.digest, str(path))
        if sha256 is not None:
            query += " AND sha256=?"
            args += (sha256,)
        return self._db.execute(query, args).fetchone() is not None
