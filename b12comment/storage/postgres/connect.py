"""Connections to PostgreSQL: psycopg 3 (the optional extra
`b12comment[postgres]`), imported only when a `postgresql://` URL is used."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from b12comment.storage.model import JournalError

if TYPE_CHECKING:
    import psycopg

APP_PREFIX = "b12comment:"  # application_name of an instance's connections: b12comment:<instance>
CONNECT_TIMEOUT_S = 5
# TCP keepalives: a connection whose peer vanished (a partition, a dead host)
# is noticed in about idle + interval * count seconds, not hours.
KEEPALIVES = dict(keepalives=1, keepalives_idle=2, keepalives_interval=1, keepalives_count=3, tcp_user_timeout=5000)


# This process's instance name ([ha] instance), set once by serve: every
# connection it opens carries it, so that the instance that takes over can
# end them all (the journal's, the lease's and the context store's).
_process_instance = ""


def name_process(instance: str) -> None:
    global _process_instance
    _process_instance = instance


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def psycopg_module() -> Any:
    try:
        import psycopg
    except ImportError:
        raise JournalError(
            "a postgresql:// URL needs psycopg: install b12comment with the extra, pip install 'b12comment[postgres]'"
        ) from None
    return psycopg


def connect(url: str, instance: str = "", autocommit: bool = False) -> psycopg.Connection:
    """A connection of its own (no pool), with keepalives and the instance's name."""
    psycopg = psycopg_module()
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name=f"{APP_PREFIX}{instance or _process_instance}"[:63],
            **KEEPALIVES,
        )
    except psycopg.Error as exc:
        raise JournalError(f"cannot connect to {redact(url)}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def describe(exc: BaseException) -> str:
    return _first_line(exc)
