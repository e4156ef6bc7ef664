"""The SQLite journal's schema, and the migration of an older journal.

The version is in PRAGMA user_version. A journal of an older version is
migrated when it is opened, in one transaction (a crash half-way leaves the
old one intact); one of a newer version is refused.

Versions: 0 kept replay's file in `peer` and its position in `conn_seq`, and
called a frame answered AR 'rejected'; 2 added the tables `large_raw` and
`large_processed`; 3 dropped the column `digest` (a hash written at intake
and never read: a retransmission is found by its bytes).
"""

from __future__ import annotations

import sqlite3
import uuid

from b12comment.storage.model import STATES, JournalError

SCHEMA_VERSION = 3

# The columns of a row, in the order every reader selects them (see rows.py).
# peer and conn_seq: where a frame came from (address, its number on that
# connection). source and position: where `replay --forward` read a message
# (`replay:<file>`, its number in the file).
_TABLE = """
CREATE TABLE {name} (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at  REAL    NOT NULL,
    updated_at   REAL    NOT NULL,
    peer         TEXT    NOT NULL DEFAULT '',
    conn_seq     INTEGER NOT NULL DEFAULT 0,
    source       TEXT    NOT NULL DEFAULT '',
    position     INTEGER NOT NULL DEFAULT 0,
    control_id   TEXT    NOT NULL DEFAULT '',
    message_type TEXT    NOT NULL DEFAULT '',
    raw          BLOB    NOT NULL,
    processed    BLOB,
    state        TEXT    NOT NULL CHECK (state IN ({states})),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    commented    INTEGER,
    reasons      TEXT
)
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS messages_by_state ON messages (state, id);
CREATE INDEX IF NOT EXISTS messages_by_control_id ON messages (control_id, received_at);
CREATE INDEX IF NOT EXISTS messages_by_source ON messages (source, position) WHERE source != '';
CREATE TABLE IF NOT EXISTS holds (id INTEGER PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS large_raw (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS large_processed (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
LARGE_TABLES = ("large_raw", "large_processed")

_KEPT = (
    "id, received_at, updated_at, peer, conn_seq, source, position, control_id, message_type, raw, processed, "
    "state, attempts, last_error, commented, reasons"
)
# Version 0's columns mapped to today's: replay's rows move from peer/conn_seq
# to source/position, and 'rejected' is 'invalid'.
_FROM_V0 = (
    "id, received_at, updated_at, "
    "CASE WHEN peer LIKE 'replay:%' THEN '' ELSE peer END, "
    "CASE WHEN peer LIKE 'replay:%' THEN 0 ELSE conn_seq END, "
    "CASE WHEN peer LIKE 'replay:%' THEN peer ELSE '' END, "
    "CASE WHEN peer LIKE 'replay:%' THEN conn_seq ELSE 0 END, "
    "control_id, message_type, raw, processed, "
    "CASE WHEN state = 'rejected' THEN 'invalid' ELSE state END, "
    "attempts, last_error, commented, reasons"
)


def _table(name: str) -> str:
    return _TABLE.format(name=name, states=", ".join(f"'{s}'" for s in STATES))


def migrate(db: sqlite3.Connection, where: str) -> None:
    """Create the schema, or bring an older journal's up to SCHEMA_VERSION.
    A journal of this version is only read: a second connection opens it
    while another holds the write lock."""
    cur = db.cursor()
    if cur.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION and _complete(cur):
        return
    cur.execute("BEGIN IMMEDIATE")
    try:
        version = cur.execute("PRAGMA user_version").fetchone()[0]
        exists = cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'").fetchone()
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal {where} has schema version {version}; this b12comment knows up to {SCHEMA_VERSION}"
            )
        if not exists:
            cur.execute(_table("messages"))
        elif version < SCHEMA_VERSION:
            _rebuild(cur, _FROM_V0 if version < 1 else _KEPT)
        for statement in _INDEXES.strip().splitlines():
            cur.execute(statement)
        cur.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('journal_id', ?)", (uuid.uuid4().hex,))
        if version != SCHEMA_VERSION:
            cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        cur.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _complete(cur: sqlite3.Cursor) -> bool:
    """Every table and index of this version, and the journal's id, are there."""
    names = {name for (name,) in cur.execute("SELECT name FROM sqlite_master")}
    wanted = {"messages", *(line.split()[5] for line in _INDEXES.strip().splitlines())}
    if not wanted <= names:
        return False
    return cur.execute("SELECT 1 FROM meta WHERE key = 'journal_id'").fetchone() is not None


def _rebuild(cur: sqlite3.Cursor, select: str) -> None:
    """Copy the messages into a table of today's schema (SQLite cannot change
    a column in place everywhere), keeping the id sequence where it was: an
    id is never given twice, even when the newest rows were pruned."""
    top = cur.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
    cur.execute(_table("messages_new"))
    cur.execute(f"INSERT INTO messages_new ({_KEPT}) SELECT {select} FROM messages ORDER BY id")
    cur.execute("DROP TABLE messages")
    cur.execute("ALTER TABLE messages_new RENAME TO messages")
    if top is not None:
        cur.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'messages'", (top[0],))
        cur.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'messages', ? "
            "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'messages')",
            (top[0],),
        )
