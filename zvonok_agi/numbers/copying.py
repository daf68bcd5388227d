"""Copies one control-plane store into another (`zvonok-agi store copy`): SQLite to PostgreSQL
when one host is no longer enough, PostgreSQL to SQLite as a backup any host can open.

Every row of every table arrives as it is: keys, revisions, the outbox, users' password hashes,
their sessions, the audit log. Redis, written from the source, then already holds each record
at the revision the copy holds, and what the outbox still names is published by the copy's
publisher as it would have been by the source's.

A target that is the source under another name (a link to the file, a relative path, the
server's address for its name, other URL parameters) is refused before anything is written:
the databases are asked (`Database.same_store`), not the names compared. The target is
brought to the latest schema, then written in one transaction: a copy stopped midway (killed,
the link lost, a refused row) leaves it as empty as it was, which the next run sees. A target
that holds anything is refused unless `force` says to replace it. The source is read in one
transaction holding its writers' lock: no change is acknowledged on it while the copy runs and
then missed (its writers wait, and past their timeout are told the store is busy). Either
store busy past the timeout stops the copy before it writes anything (`CopyBusy`). Rows
stream in batches: a table of any size costs one batch of memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from .databases import (
    Connection,
    Database,
    StoreBusy,
    StoreError,
    connect,
    describe,
)
from .store import migrate

BATCH = 2000  # rows per read and per write

# Every table of the schema but its version, in an order that writes each reference after
# what it refers to (numbers and campaigns refer to each other: those references are checked
# at commit), each with the columns that order its rows.
TABLES = {
    "accounts": "id",
    "campaigns": "id",
    "numbers": "did",
    "requests": "id",
    "audit": "id",
    "outbox": "seq",
    "users": "login",
    "sessions": "id",
    "sign_in_failures": "key, at",
}
# The keys the database generates: the copy gives them, later ones must come after.
IDENTITIES = (("requests", "id"), ("audit", "id"), ("outbox", "seq"))

Progress = Callable[[str, int], None]  # (table, rows copied so far): after each batch


class TargetNotEmpty(StoreError):
    """The target store holds data, and the copy was not told to replace it."""


class CopyBusy(StoreBusy):
    """One of the two stores was busy past its timeout (other writers held its lock):
    `store` names which. Nothing was copied; try again."""

    def __init__(self, store: str | Path, cause: StoreBusy) -> None:
        super().__init__(str(cause))
        self.store = store


async def copy_store(
    source: str | Path,
    target: str | Path,
    *,
    force: bool = False,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Copies the store `source` names into the one `target` names (see `databases.connect`);
    the rows copied, per table. Raises CopyBusy when either store's writers held its lock past
    the busy timeout."""
    busy = source  # the store whose lock is being waited for
    try:
        async with contextlib.AsyncExitStack() as stack:
            reading = await connect(source)
            stack.push_async_callback(reading.close)
            writing = await connect(target)
            stack.push_async_callback(writing.close)
            if await reading.same_store(writing):
                raise StoreError(
                    f"{describe(target)} is the store being copied: it reaches the same "
                    f"database as {describe(source)}; copy into another store"
                )
            await migrate(reading)
            read = await stack.enter_async_context(reading.writing())  # its writers wait
            busy = target
            await migrate(writing)
            return await _copy(read, writing, force, batch, progress or _quiet)
    except StoreBusy as exc:
        raise CopyBusy(busy, exc) from exc


async def _copy(
    read: Connection, target: Database, force: bool, batch: int, progress: Progress
) -> dict[str, int]:
    copied = {}
    async with target.writing() as write:
        held = await _held(write)
        if held and not force:
            rows = ", ".join(f"{n} {table}" for table, n in held.items())
            raise TargetNotEmpty(
                f"the target already holds data ({rows}): copy into an empty store, or give "
                "--force to replace what it holds"
            )
        for table in reversed(TABLES):
            await write.run(f"DELETE FROM {table}")
        for table, order in TABLES.items():
            copied[table] = await _copy_table(read, write, table, order, batch, progress)
        for table, column in IDENTITIES:
            await target.continue_identity(write, table, column)
    return copied


async def _held(db: Connection) -> dict[str, int]:
    """The tables that hold rows, and how many."""
    held = {}
    for table in TABLES:
        [[count]] = await db.fetch(f"SELECT count(*) FROM {table}")
        if count:
            held[table] = count
    return held


async def _copy_table(
    read: Connection, write: Connection, table: str, order: str, batch: int, progress: Progress
) -> int:
    copied = 0
    rows_of = read.stream(f"SELECT * FROM {table} ORDER BY {order}", batch)
    async with contextlib.aclosing(rows_of):  # its cursor closed before the transaction ends
        async for rows in rows_of:
            columns = list(rows[0].keys())  # by name: the two databases' order may differ
            await write.insert_rows(table, columns, rows)
            copied += len(rows)
            progress(table, copied)
    return copied


def _quiet(table: str, copied: int) -> None:
    pass
