"""The results store's SQLite file: its schema as ordered migrations, and opening it safely.

The schema version is SQLite's ``user_version``: the number of :data:`MIGRATIONS` applied.
Opening a store applies the missing steps in place, each in its own transaction with its
version, so a store written by any earlier allscan is brought up to date and a crash midway
leaves it at a whole step. To grow the schema, append a step; never edit or reorder one.

A file that is not a readable SQLite database (truncated, overwritten, random bytes) is moved
aside to ``<store>.corrupt-<time>`` and a fresh store takes its place; its images are scored
again. This module imports nothing heavy, so the command line can check a store before the
models load.
"""

import os
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

Migration = str | Callable[[sqlite3.Connection], None]

MIGRATIONS: list[Migration] = [
    # 1: the schema of allscan 0.1.0, whose stores carry user_version 0 and already hold these tables.
    """
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
    """,
    # 2: domain handling (scale and fields, the out-of-domain guard) adds five columns to scores.
    """
    ALTER TABLE scores ADD COLUMN scale REAL;
    ALTER TABLE scores ADD COLUMN tiles INTEGER;
    ALTER TABLE scores ADD COLUMN domain TEXT NOT NULL DEFAULT '';
    ALTER TABLE scores ADD COLUMN domain_score REAL;
    ALTER TABLE scores ADD COLUMN notes TEXT NOT NULL DEFAULT '';
    """,
    # 3: specimens: each file's specimen, as the run that wrote the outputs last assigned it.
    """
    ALTER TABLE files ADD COLUMN specimen TEXT NOT NULL DEFAULT '';
    """,
    # 4: cells: each score's cell threshold (NULL: cells were not looked for) and its white cells, one row each.
    """
    ALTER TABLE scores ADD COLUMN cell_threshold REAL;
    CREATE TABLE IF NOT EXISTS cells (
        digest TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        cell INTEGER NOT NULL,
        x REAL NOT NULL,
        y REAL NOT NULL,
        x0 INTEGER NOT NULL,
        y0 INTEGER NOT NULL,
        x1 INTEGER NOT NULL,
        y1 INTEGER NOT NULL,
        nucleus_area_px REAL NOT NULL,
        p_blast REAL NOT NULL,
        per_model TEXT NOT NULL,
        PRIMARY KEY (digest, sha256, cell)
    );
    """,
    # 5: each file's real path (absolute, links resolved), so that a rerun from another folder, whose relative
    # paths are spelt otherwise, knows its files (empty for rows stored before).
    """
    ALTER TABLE files ADD COLUMN real_path TEXT NOT NULL DEFAULT '';
    """,
]


class StoreError(Exception):
    """A results store this allscan cannot use: written by a newer allscan, or corrupt when only read."""


_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_SIDE_FILES = ("-wal", "-shm")


def schema_version() -> int:
    """The schema version this allscan writes."""
    return len(MIGRATIONS)


def open_database(path: Path, move_corrupt: bool = True) -> tuple[sqlite3.Connection, Path | None]:
    """Open (creating or migrating) the store at ``path``.

    Args:
        path: The store file.
        move_corrupt: Move a corrupt file aside and start afresh; else report it as a StoreError.

    Returns:
        The connection, and where a corrupt file found at ``path`` was moved (else None).

    Raises:
        StoreError: The store was written by a newer allscan, or is corrupt and ``move_corrupt`` is false.
        sqlite3.Error: The file cannot be opened or written (permissions, disk full).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _open_checked(path), None
    except _Corrupt:
        if not move_corrupt:
            raise StoreError(f"the results store {path} is corrupt") from None
        moved = _move_aside(path)
        return _open_checked(path), moved


def prepare_store(path: Path) -> Path | None:
    """Check, migrate or replace the store at ``path`` and close it; where a corrupt one went, if anywhere."""
    db, moved = open_database(path)
    db.close()
    return moved


class _Corrupt(Exception):
    pass


def _open_checked(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        if db.execute("PRAGMA quick_check").fetchall() != [("ok",)]:
            raise _Corrupt
        _migrate(db, path)
    except sqlite3.DatabaseError as err:
        db.close()
        if getattr(err, "sqlite_errorcode", None) in _CORRUPT_CODES:
            raise _Corrupt from err
        raise
    except BaseException:
        db.close()
        raise
    return db


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(f"the results store {path} was written by a newer allscan (store schema {version}; this"
                         f" allscan knows up to {len(MIGRATIONS)}); upgrade allscan or use another --out")
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        try:
            if isinstance(step, str):
                db.executescript(f"BEGIN IMMEDIATE; {step}; PRAGMA user_version = {number}; COMMIT;")
            else:
                db.execute("BEGIN IMMEDIATE")
                step(db)
                db.execute(f"PRAGMA user_version = {number}")
                db.commit()
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise


def _move_aside(path: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    target = Path(f"{path}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = Path(f"{path}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    for suffix in _SIDE_FILES:
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.replace(side, Path(f"{target}{suffix}"))
    return target
