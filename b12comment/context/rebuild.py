"""`b12comment context rebuild`: the context store made again from the journal.

The new store is written beside the old one and put in its place when it is
complete, so an interrupted rebuild leaves the old store as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

from b12comment.config import Config
from b12comment.context import ContextError, open_store
from b12comment.context.store import lock_store, rebuild, unlock_store
from b12comment.errors import EXIT_OK, B12Error
from b12comment.storage import JournalError, is_url, open_journal, shown


def run_rebuild(config: Config) -> int:
    if is_url(config.context.store):
        return _rebuild_in_database(config)
    store_path = Path(config.context.store)
    journal_path: str | Path = config.journal.path  # a postgresql:// URL is opened as it is
    if not is_url(journal_path):
        journal_path = Path(journal_path)
        if not journal_path.is_file():
            raise B12Error(f"no journal at {journal_path} ([journal] path in {config.source})")
    fresh = store_path.with_name(store_path.name + ".rebuild")
    try:
        held = lock_store(store_path)  # serve must not be using the store it replaces
    except ContextError as exc:
        raise B12Error(f"context rebuild: {exc}") from None
    try:
        return _rebuild(config, journal_path, store_path, fresh)
    finally:
        unlock_store(held)


def _rebuild(config: Config, journal_path: str | Path, store_path: Path, fresh: Path) -> int:
    for p in (fresh, Path(f"{fresh}-wal"), Path(f"{fresh}-shm")):
        p.unlink(missing_ok=True)
    try:
        journal = open_journal(journal_path)
        try:
            store = open_store(str(fresh), config.context.key_file, lock=False)
            try:
                count = rebuild(store, journal.raw_rows(), config.rule, config.context.lookback_days)
            finally:
                store.close()
        finally:
            journal.close()
        os.replace(fresh, store_path)
        for suffix in ("-wal", "-shm"):
            Path(f"{store_path}{suffix}").unlink(missing_ok=True)
    except (ContextError, JournalError) as exc:
        raise B12Error(f"context rebuild: {exc}") from None
    print(f"rebuilt {store_path} from {count} journaled messages")
    return EXIT_OK


def _rebuild_in_database(config: Config) -> int:
    """A store in PostgreSQL is made again in one transaction: its rows go and
    come back together (an interrupted rebuild leaves them as they were)."""
    from b12comment.storage.postgres.context import PostgresContextStore

    try:
        journal = open_journal(config.journal.path)
        try:
            store = open_store(config.context.store, config.context.key_file)
            assert isinstance(store, PostgresContextStore)
            try:
                store.clear_for_rebuild()
                count = rebuild(store, journal.raw_rows(), config.rule, config.context.lookback_days)
                store.finish_rebuild()
            finally:
                store.close()
        finally:
            journal.close()
    except (ContextError, JournalError) as exc:
        raise B12Error(f"context rebuild: {exc}") from None
    print(f"rebuilt {shown(config.context.store)} from {count} journaled messages")
    return EXIT_OK
