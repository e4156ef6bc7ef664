"""The context shell: the store of the patient's other results (keyed
hashes only) that the deciding chain (core/chain.py) is given."""

from __future__ import annotations

from .store import ContextError, ContextStore, load_key

__all__ = ["ContextError", "ContextStore", "load_key", "open_store"]


def open_store(path: str, key_file: str) -> ContextStore:
    """The store at `path`: a SQLite file, or a `postgresql://` URL (the
    store that active-passive instances share; storage/postgres/context.py)."""
    if path.startswith(("postgresql://", "postgres://")):
        from b12comment.storage.postgres.context import PostgresContextStore

        return PostgresContextStore(path, load_key(key_file))
    return ContextStore(path, load_key(key_file))
