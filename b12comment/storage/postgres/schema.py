"""The PostgreSQL journal's schema. Its version is in b12_meta; an older
one is migrated when the journal is opened, a newer one refused. Two
instances starting together create it once (a transaction-level advisory
lock serialises the migration).

PostgreSQL keeps a large bytea out of line (TOAST) by itself, and an UPDATE
that does not change it does not copy it, so large messages need no tables
of their own here.
"""

from __future__ import annotations

import uuid
from typing import Any

from b12comment.storage.model import STATES, JournalError

SCHEMA_VERSION = 1
MIGRATION_LOCK = 0x6231_3263  # pg_advisory_xact_lock key while the schema is made
LEADER_LOCK = 0x6231_326C  # pg_advisory_lock key the leader holds for as long as it leads

_STATES = ", ".join(f"'{s}'" for s in STATES)
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS b12_meta (key text PRIMARY KEY, value text NOT NULL)",
    f"""CREATE TABLE IF NOT EXISTS b12_messages (
        id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        received_at  double precision NOT NULL,
        updated_at   double precision NOT NULL,
        peer         text    NOT NULL DEFAULT '',
        conn_seq     bigint  NOT NULL DEFAULT 0,
        source       text    NOT NULL DEFAULT '',
        position     bigint  NOT NULL DEFAULT 0,
        control_id   text    NOT NULL DEFAULT '',
        message_type text    NOT NULL DEFAULT '',
        raw          bytea   NOT NULL,
        processed    bytea,
        state        text    NOT NULL CHECK (state IN ({_STATES})),
        attempts     integer NOT NULL DEFAULT 0,
        last_error   text,
        commented    boolean,
        reasons      text
    )""",
    "CREATE INDEX IF NOT EXISTS b12_messages_by_state ON b12_messages (state, id)",
    "CREATE INDEX IF NOT EXISTS b12_messages_by_control_id ON b12_messages (control_id, received_at)",
    "CREATE INDEX IF NOT EXISTS b12_messages_by_source ON b12_messages (source, position) WHERE source != ''",
    "CREATE TABLE IF NOT EXISTS b12_holds (id bigint PRIMARY KEY, until double precision NOT NULL)",
    # The lease of the instance that leads (see lease.py): one row.
    """CREATE TABLE IF NOT EXISTS b12_lease (
        name       text PRIMARY KEY,
        holder     text NOT NULL DEFAULT '',
        epoch      bigint NOT NULL DEFAULT 0,
        expires_at timestamptz NOT NULL DEFAULT 'epoch',
        since      timestamptz NOT NULL DEFAULT 'epoch'
    )""",
    "INSERT INTO b12_lease (name) VALUES ('leader') ON CONFLICT DO NOTHING",
]


def migrate(conn: Any, where: str) -> None:
    """Create the schema, or check that it is one this version knows."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        found = conn.execute("SELECT to_regclass('b12_meta') IS NOT NULL").fetchone()[0]
        version = 0
        if found:
            row = conn.execute("SELECT value FROM b12_meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal {where} has schema version {version}; this b12comment knows up to {SCHEMA_VERSION}"
            )
        if version < SCHEMA_VERSION:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO b12_meta (key, value) VALUES ('journal_id', %s) ON CONFLICT DO NOTHING",
                (uuid.uuid4().hex,),
            )
            conn.execute(
                "INSERT INTO b12_meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(SCHEMA_VERSION),),
            )
