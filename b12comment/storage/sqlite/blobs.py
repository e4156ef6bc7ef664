"""A large message's bytes, kept out of its row.

A message over `LARGE_BYTES` has its bytes in `large_raw` (and its processed
bytes, if they differ, in `large_processed`) under the row's id, and the
row's column holds an empty blob. SQLite rewrites a whole row on every
UPDATE, so a state change of a row that held 20 MB would read those 20 MB
into memory twice and may write them to the WAL again; kept apart, the bytes
are written once, with SQLite's incremental blob I/O (no copy of them is
made on the way in), and read once into one `bytes` object on the way out.
"""

from __future__ import annotations

import sqlite3

_COMPARE_CHUNK = 1024 * 1024


def read_large(db: sqlite3.Connection, table: str, id: int) -> bytes:
    with db.blobopen(table, "data", id, readonly=True) as blob:
        return blob.read()


def write_large(db: sqlite3.Connection, table: str, id: int, data: bytes) -> None:
    """Keep `data` under `id` in a large table (in the open transaction):
    room is made with zeroblob() and filled in place, so SQLite makes no
    copy of the bytes."""
    db.execute(f"INSERT OR REPLACE INTO {table} (id, data) VALUES (?, zeroblob(?))", (id, len(data)))
    with db.blobopen(table, "data", id) as blob:
        blob.write(data)


def large_equals(db: sqlite3.Connection, table: str, id: int, data: bytes) -> bool:
    """Whether the large bytes kept under `id` are `data` (read a piece at a time)."""
    try:
        blob = db.blobopen(table, "data", id, readonly=True)
    except sqlite3.OperationalError:  # no such row
        return False
    with blob:
        if len(blob) != len(data):
            return False
        for pos in range(0, len(data), _COMPARE_CHUNK):
            if blob.read(_COMPARE_CHUNK) != data[pos : pos + _COMPARE_CHUNK]:
                return False
    return True
