"""The control plane's store held busy by another connection: a real SQLite connection in
`BEGIN IMMEDIATE`, or on PostgreSQL another session holding the writers' advisory lock."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator

import asyncpg

from zvonok_agi.numbers import databases
from zvonok_agi.numbers.postgresql import lock_key

BUSY_MS = 200  # the busy timeout tests run with (`short_busy_timeout`): a change waits this long


@contextlib.asynccontextmanager
async def write_lock_held(store_url: str) -> AsyncIterator[None]:
    """Another connection holds the store's write lock while the block runs."""
    if not store_url.startswith(("postgresql:", "postgres:")):
        other = sqlite3.connect(databases.sqlite_path(store_url), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()
        return
    other = await asyncpg.connect(store_url)
    try:
        schema = await other.fetchval("SELECT current_schema()")
        await other.execute(f"SELECT pg_advisory_lock({lock_key(schema, 'writer')})")
        yield
    finally:
        await other.close()
