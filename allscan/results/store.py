"""The results store: an SQLite file beside the output where each result lands as it is computed.

Scores are keyed by the image's sha256 and the results digest (models, site profile, options), so an image
is never scored twice by the same models, whatever its name; a score's white cells are stored with it, one
row each; file rows are keyed by path. Every batch is committed before it is reported, so a killed run loses
nothing that was reported, and a rerun picks up where it stopped.
"""

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, UTC
from pathlib import Path

from allscan.fileio import OutputError
from allscan.paths import path_text, real_path_text, store_path_for
from allscan.results.types import CellFindings, CellResult, DomainInfo, ImageResult, Score
from allscan.results.lock import StoreLock
from allscan.results.schema import open_database

__all__ = ["ResultStore", "store_path_for"]

_SCORE_COLUMNS = ("p_all, verdict, review, agreement, per_model, scale, tiles, domain, domain_score, notes,"
                  " cell_threshold")
_CELL_COLUMNS = "cell, x, y, x0, y0, x1, y1, nucleus_area_px, p_blast, per_model"


def _score(row, cells: tuple[CellResult, ...]) -> Score:
    """A score from its row; ``cells`` are its stored cells (read only when its cell threshold says they were
    looked for)."""
    p_all, verdict, review, agreement, per_model, scale, tiles, domain, domain_score, notes, cell_threshold = row
    info = DomainInfo(scale, tiles, domain, domain_score, notes) if tiles is not None else None
    findings = CellFindings(cells, cell_threshold) if cell_threshold is not None else None
    return Score(p_all, verdict, bool(review), agreement, json.loads(per_model), info, findings)


def _cell_row(cell: CellResult) -> tuple:
    """A cell's values in :data:`_CELL_COLUMNS` order, as plain Python numbers (SQLite binds no numpy ints)."""
    return (int(cell.cell), float(cell.x), float(cell.y), int(cell.x0), int(cell.y0), int(cell.x1), int(cell.y1),
            float(cell.nucleus_area_px), float(cell.p_blast),
            json.dumps({name: float(p) for name, p in cell.per_model.items()}))


def _still_there(real_path: str) -> bool:
    """Whether the file stored with this real path is still there. A row stored before real paths were (no real
    path: its path may be relative to another folder) and a name stored with its bytes that are not UTF-8 escaped
    (``\\xNN``, :func:`~allscan.paths.path_text`) cannot be looked up: they count as there."""
    return not real_path or "\\x" in real_path or os.path.lexists(real_path)


def latest_digest(path: Path) -> str | None:
    """The models digest of the row recorded last in the store at ``path`` (None when it holds none)."""
    db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT digest FROM files ORDER BY recorded_at DESC, seq DESC LIMIT 1").fetchone()
    finally:
        db.close()
    return row[0] if row else None


class ResultStore:
    """Durable results for one models digest.

    Opening a store brings its schema up to date (:mod:`allscan.results.schema`). A writer (the
    default) first takes the store's writer lock (:mod:`allscan.results.lock`), and a corrupt
    file is moved aside, its new path kept in ``moved_aside``. With ``writer=False`` the store
    is opened to read beside a run that may be writing it: no lock, and a corrupt file is
    reported, not moved.

    Raises:
        StoreBusy: A writer, and another process is writing this store.
        StoreError: The store was written by a newer allscan, or is corrupt and opened to read.
        OutputError: The store cannot be opened or written (permissions, disk full).
    """

    def __init__(self, path: Path, digest: str, writer: bool = True):
        self.path = Path(path)
        self.digest = digest
        self._lock = StoreLock(self.path, writer=True) if writer else None
        if self._lock is not None:
            self._lock.acquire()
        try:
            with self._io():
                self._db, self.moved_aside = open_database(self.path, move_corrupt=writer)
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _io(self) -> Iterator[None]:
        """Turn SQLite and OS failures into an :class:`OutputError` naming the store."""
        try:
            yield
        except sqlite3.Error as err:
            raise OutputError(self.path, str(err)) from err
        except OSError as err:
            if isinstance(err, OutputError):
                raise
            raise OutputError(self.path, err.strerror or str(err)) from err

    def score_for(self, sha256: str) -> Score | None:
        """The stored score of an image's content under these models, if any."""
        with self._io():
            row = self._db.execute(
                f"SELECT {_SCORE_COLUMNS} FROM scores WHERE digest=? AND sha256=?", (self.digest, sha256)
            ).fetchone()
            return None if row is None else self._stored_score(row, sha256)

    def _stored_score(self, row, sha256: str) -> Score:
        """A score row with its cells, if they were looked for."""
        looked = row[-1] is not None
        return _score(row, self._cells(sha256) if looked else ())

    def _cells(self, sha256: str) -> tuple[CellResult, ...]:
        rows = self._db.execute(f"SELECT {_CELL_COLUMNS} FROM cells WHERE digest=? AND sha256=? ORDER BY cell",
                                (self.digest, sha256))
        return tuple(CellResult(*values, json.loads(per_model)) for *values, per_model in rows)

    def scored_hashes(self) -> frozenset[str]:
        """Every image content already scored by these models."""
        with self._io():
            rows = self._db.execute("SELECT sha256 FROM scores WHERE digest=?", (self.digest,)).fetchall()
        return frozenset(r[0] for r in rows)

    def figures(self) -> dict[str, str]:
        """The heatmap figure stored for each content that has one, ``{sha256: path}`` (the latest)."""
        with self._io():
            rows = self._db.execute("SELECT sha256, heatmap FROM files WHERE digest=? AND heatmap!='' ORDER BY seq",
                                    (self.digest,)).fetchall()
        return dict(rows)

    def first_file_for(self, sha256: str) -> tuple[str, str] | None:
        """The first path stored with this content whose file is still there (to mark later copies as duplicates:
        a copy of a file since deleted is no duplicate of a file the lab cannot find) and the real path of its file
        when it was stored (empty for rows stored before real paths were)."""
        with self._io():
            rows = self._db.execute(
                "SELECT path, real_path FROM files WHERE digest=? AND sha256=? AND error='' ORDER BY seq",
                (self.digest, sha256),
            ).fetchall()
        return next(((path, real) for path, real in rows if _still_there(real)), None)

    def add(self, results: Iterable[ImageResult]) -> None:
        """Store a batch of results, with their cells, in one transaction (durable on return)."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._io(), self._db:
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM files").fetchone()[0]
            for result in results:
                seq += 1
                if result.score is not None:
                    s = result.score
                    d = s.domain
                    domain = (d.scale, d.tiles, d.domain, d.domain_score, d.notes) if d else (None, None, "", None, "")
                    threshold = float(s.cells.threshold) if s.cells is not None else None
                    self._db.execute(
                        f"INSERT OR REPLACE INTO scores (digest, sha256, {_SCORE_COLUMNS})"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (self.digest, result.sha256, s.p_all, s.verdict, int(s.review), s.agreement,
                         json.dumps(s.per_model), *domain, threshold),
                    )
                    self._replace_cells(result.sha256, s.cells)
                self._db.execute(
                    "INSERT INTO files (digest, path, sha256, width, height, error, first_path, heatmap, seq,"
                    " recorded_at, specimen, real_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (digest, path) DO UPDATE SET sha256=excluded.sha256, width=excluded.width,"
                    " height=excluded.height, error=excluded.error, first_path=excluded.first_path,"
                    " heatmap=excluded.heatmap, recorded_at=excluded.recorded_at, specimen=excluded.specimen,"
                    " real_path=excluded.real_path",
                    (self.digest, path_text(result.path), result.sha256, result.width, result.height,
                     path_text(result.error), path_text(result.duplicate_of), path_text(result.heatmap), seq, now,
                     path_text(result.specimen), real_path_text(result.path)),
                )

    def _replace_cells(self, sha256: str, cells: CellFindings | None) -> None:
        """Make the stored cells of this content ``cells``' (none when they were not looked for)."""
        self._db.execute("DELETE FROM cells WHERE digest=? AND sha256=?", (self.digest, sha256))
        if cells is not None:
            self._db.executemany(f"INSERT INTO cells (digest, sha256, {_CELL_COLUMNS}) VALUES ({', '.join('?' * 12)})",
                                 [(self.digest, sha256, *_cell_row(c)) for c in cells.cells])

    def results(self, paths: Iterable[Path] | None = None) -> Iterator[ImageResult]:
        """Stored results, in path order; only ``paths`` when given."""
        with self._io():
            yield from self._results(paths)

    def _results(self, paths: Iterable[Path] | None) -> Iterator[ImageResult]:
        wanted = None if paths is None else {path_text(p): Path(p) for p in paths}
        score_columns = ", ".join(f"s.{c}" for c in _SCORE_COLUMNS.split(", "))
        rows = self._db.execute(
            f"SELECT f.path, f.sha256, f.width, f.height, f.error, f.first_path, f.heatmap, f.specimen,"
            f" {score_columns}"
            " FROM files f LEFT JOIN scores s ON s.digest=f.digest AND s.sha256=f.sha256 AND f.error=''"
            " WHERE f.digest=? ORDER BY f.path",
            (self.digest,),
        )
        for path, sha, width, height, error, first, heatmap, specimen, *score_row in rows:
            if wanted is not None and path not in wanted:
                continue
            score = self._stored_score(score_row, sha) if not error and score_row[0] is not None else None
            # The path as asked for: a name that is not UTF-8 is stored as its text (path_text), not as itself.
            path = Path(path) if wanted is None else wanted[path]
            yield ImageResult(path, sha, width, height, score, error, first, heatmap, specimen)

    def set_specimens(self, specimens: dict[str, str]) -> None:
        """Record each path's specimen (``{path: specimen}``) in one transaction; rows that already hold it
        are not rewritten (a watch records every row's at each rewrite of its outputs)."""
        with self._io(), self._db:
            self._db.executemany("UPDATE files SET specimen=? WHERE digest=? AND path=? AND specimen!=?",
                                 [(specimen, self.digest, path_text(path), specimen)
                                  for path, specimen in specimens.items()])

    def move_path(self, old: Path, new: Path) -> None:
        """Record that the image stored at ``old`` now lies at ``new`` (moved by a watch's ``--move-to``)."""
        with self._io(), self._db:
            self._db.execute("UPDATE files SET path=?, real_path=? WHERE digest=? AND path=?",
                             (path_text(new), real_path_text(new), self.digest, path_text(old)))

    def recorded(self) -> dict[str, datetime]:
        """When each stored path's row was last recorded, ``{path: time}``, for these models."""
        with self._io():
            rows = self._db.execute("SELECT path, recorded_at FROM files WHERE digest=?", (self.digest,)).fetchall()
        return {path: datetime.fromisoformat(when) for path, when in rows}

    def has_path(self, path: Path, sha256: str | None = None) -> bool:
        """Whether ``path`` already has a row under these models (for this content, when given)."""
        query = "SELECT 1 FROM files WHERE digest=? AND path=?"
        args: tuple = (self.digest, path_text(path))
        if sha256 is not None:
            query += " AND sha256=?"
            args += (sha256,)
        with self._io():
            return self._db.execute(query, args).fetchone() is not None
