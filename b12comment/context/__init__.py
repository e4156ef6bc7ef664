"""The context shell: the store of the patient's other results (keyed
hashes only) that the deciding chain (core/chain.py) is given."""

from __future__ import annotations

from pathlib import Path

from .store import ContextError, ContextStore, load_key

__all__ = ["ContextError", "ContextStore", "load_key", "open_store"]


def open_store(path: str, key_file: str, *, lock: bool = True) -> ContextStore:
    """The store at `path`: a SQLite file, or a `postgresql://` URL (the
    store that active-passive instances share; storage/postgres/context.py).
    A SQLite store is locked to this process (`lock`). A missing key file is
    made, unless the store already holds rows made with a key: then it is
    refused (a new key would match none of them)."""
    if path.startswith(("postgresql://", "postgres://")):
        from b12comment.storage.postgres.context import PostgresContextStore

        return PostgresContextStore(path, load_key(key_file))
    store = Path(path)
    if store.is_file() and store.stat().st_size > 0 and not Path(key_file).exists():
        raise ContextError(
            f"the context key file {key_file} is missing, but the context store {path} was made with a key: "
            "restore the key file, or make the store again with `b12comment context rebuild` (with a new key)"
        )
    return ContextStore(path, load_key(key_file), lock=lock)
