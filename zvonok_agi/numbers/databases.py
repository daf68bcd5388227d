"""The two databases the control plane's store runs on, behind one small interface: SQLite (one
file, the embedded default; here) and PostgreSQL (a server that admin processes on several
hosts share, through asyncpg: `postgresql`). Everything that differs between them lives in
these two modules:

- placeholders: the store's SQL is written once, with `?`; PostgreSQL gets `$1, $2, ...`;
- transactions: writers run one at a time, whichever process they are in (SQLite: `BEGIN
  IMMEDIATE`; PostgreSQL: READ COMMITTED under a transaction-level advisory lock), so that the
  service's check-then-change steps see nothing change under them on either; a read runs in
  one snapshot and never waits for a writer (PostgreSQL: `REPEATABLE READ READ ONLY`);
- the publisher's lock, which one process holds while it writes the outbox to Redis (SQLite:
  an flock on a file beside the database; PostgreSQL: a session-level advisory lock);
- errors: each driver's are raised as `StoreBusy` (other writers held the lock past the busy
  timeout: try again shortly), `StoreUnavailable` (away: try again later) or `StoreConflict` (a
  constraint refused the change);
- the schema's version: `PRAGMA user_version`, or a `schema_version` table (migrations.py says
  how the steps differ).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import orjson

BUSY_TIMEOUT_MS = 5000  # how long a change waits for the other writers before it is "busy"
CONNECT_TIMEOUT = 5.0  # seconds to reach a PostgreSQL server
FLOCK_POLL = 0.002  # seconds between two tries of SQLite's publisher lock
SYNCHRONOUS_NORMAL = 1  # SQLite's `PRAGMA synchronous` level at which WAL commits skip fsync


class StoreError(Exception):
    """The store refused or failed a statement (the driver's error is the cause)."""


class StoreUnavailable(StoreError):
    """The store is away, or busy (`StoreBusy`): nothing was changed; try again later."""


class StoreBusy(StoreUnavailable):
    """Other writers held the store's write lock past the busy timeout (or a conflict with
    one of them ended the transaction): nothing was changed; try again shortly."""


class StoreConflict(StoreError):
    """A constraint of the schema refused the change (a reference or a key)."""


class Connection(Protocol):
    """Statements inside a transaction, with `?` placeholders. Rows are read by column name or
    by position (sqlite3.Row, asyncpg.Record)."""

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...

    async def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Runs a change; the rows it changed."""

    async def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def fetch_steps(self, steps: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """Runs statements in order, in one trip where the database can (SQLite: one hand-over
        to its thread); each one's rows."""

    async def run_later(self, sql: str, args: Sequence[Any] = ()) -> None:
        """A change nobody waits on: sent with the next statement, or with the transaction's
        end, where that saves a trip (SQLite); else run now. Its error comes with theirs."""

    def each(self, sql: str, rows: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
        """`fetch_each`'s statement and values, for `fetch_steps`."""

    async def fetch_each(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """Runs `sql` once for all of `rows`, which it reads as the table `{rows}`: the rows go
        as one JSON array, the i-th value of a row is `value->>i` (text on PostgreSQL: cast
        the others). One statement, however many rows: SQLite runs it without holding the
        interpreter's lock, which `run_many` takes to bind every row, so the process's other
        work goes on meanwhile."""

    def stream(self, sql: str, size: int) -> AsyncIterator[list[Any]]:
        """The rows of a query, `size` at a time, read as they are needed (a table of any size
        costs one batch of memory)."""

    async def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Adds rows as they are, their values in the order of `columns` (a copy's batch)."""


class Database(Protocol):
    name: str  # "sqlite" or "postgresql": which steps of a migration it runs

    def writing(self, *, alone: bool = True) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises. Alone:
        the writers of every process one at a time. Not alone (the outbox's bookkeeping, which
        no check of the service reads), it may run beside others where the database can, its
        commit need not wait for the disk (lost in a crash, it is only done again), and each
        of its statements may commit on its own (SQLite's do): they must stand each alone."""

    def reading(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A read-only transaction: one consistent snapshot."""

    def publishing(self, wait: float) -> contextlib.AbstractAsyncContextManager[None]:
        """Holds the publisher's lock, which one process of all those sharing the store holds at
        a time; waits up to `wait` seconds for it, then raises StoreUnavailable."""

    async def schema_version(self, db: Connection) -> int: ...

    async def set_schema_version(self, db: Connection, version: int) -> None: ...

    async def continue_identity(self, db: Connection, table: str, column: str) -> None:
        """After rows were written with their keys given (a copy): the keys `column` generates
        from now on come after the largest of them."""

    async def same_store(self, other: Database) -> bool:
        """Whether `other`, opened by another name (a link, a relative path, a host's address
        instead of its name, other parameters), is this very store: asked of the databases,
        not of their names."""

    async def close(self) -> None: ...


async def connect(target: str | Path, *, pool_size: int = 10) -> Database:
    """The database `target` names: a PostgreSQL URL (postgresql://...), a SQLite URL
    (sqlite:///relative/path, sqlite:////absolute/path, sqlite:///:memory:), or a SQLite file's
    path."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        try:
            from .postgresql import PostgreSQL
        except ImportError as exc:  # asyncpg: the "postgresql" extra
            raise StoreError(
                f"a PostgreSQL store needs asyncpg: pip install 'zvonok-agi[postgresql]' ({exc})"
            ) from exc
        return await PostgreSQL.open(text, pool_size)
    return await SQLite.open(sqlite_path(text))


def sqlite_path(target: str) -> str:
    if not target.startswith("sqlite:"):
        return target
    if not target.startswith("sqlite:///") or len(target) == len("sqlite:///"):
        raise ValueError(f"a SQLite URL is sqlite:///path (relative) or sqlite:////path: {target}")
    return target.removeprefix("sqlite:///")


def json_array(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as the JSON text `Connection.fetch_each` sends (enums as their values)."""
    return orjson.dumps(rows).decode()


def describe(target: str | Path) -> str:
    """`target` without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", str(target))


# SQLite


@contextlib.contextmanager
def _sqlite_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise StoreConflict(str(exc)) from exc
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise StoreBusy(str(exc)) from exc  # locked past the busy timeout
        raise StoreUnavailable(str(exc)) from exc  # the disk, no file


_Step = tuple[str, Sequence[Any], bool]  # SQL, its values (many rows' if the flag), many


class _SQLiteConnection:
    """Every statement goes to aiosqlite's thread, one trip each: a trip is a hand-over between
    threads (a queue, a wake-up of the event loop), the most of what a statement costs the
    process. So statements that can wait (`run_later`: the transaction's BEGIN, an audit row)
    go with the next one, and `fetch_steps` sends several in one trip."""

    def __init__(self, db: aiosqlite.Connection, *, synced: int | None = None) -> None:
        self._db = db
        self._later: list[_Step] = []
        # `synced`: the connection's `synchronous` level, restored after each trip, which runs
        # at NORMAL: in WAL mode its commits do not wait for the disk (the outbox's bookkeeping)
        self._synced = synced

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return (await self._trip([(sql, tuple(args), False)]))[0][0]

    async def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        return (await self._trip([(sql, tuple(args), False)]))[0][1]

    async def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._trip([(sql, [tuple(row) for row in rows], True)])

    async def fetch_steps(self, steps: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        return [rows for rows, _ in await self._trip([(sql, tuple(a), False) for sql, a in steps])]

    async def run_later(self, sql: str, args: Sequence[Any] = ()) -> None:
        self._later.append((sql, tuple(args), False))

    def forget_later(self) -> None:
        """Drops what waits to be sent (its transaction is over)."""
        self._later.clear()

    def each(self, sql: str, rows: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
        return sql.format(rows="json_each(?)"), [json_array(rows)]

    async def fetch_each(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        return await self.fetch(*self.each(sql, rows))

    async def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        marks = ", ".join("?" * len(columns))
        await self.run_many(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    async def stream(self, sql: str, size: int) -> AsyncIterator[list[Any]]:
        await self._trip([])  # what waits goes first
        with _sqlite_errors():
            async with self._db.execute(sql) as cursor:
                while rows := await cursor.fetchmany(size):
                    yield list(rows)

    async def _trip(self, steps: list[_Step]) -> list[tuple[list[Any], int]]:
        """Runs what waits, then `steps`, in one hand-over to aiosqlite's thread (its own
        `_execute`, as its public methods use it): each step's rows and changed rows' count."""
        steps, waiting = self._later + steps, len(self._later)
        self._later = []
        if not steps:
            return []
        with _sqlite_errors():
            done = await self._db._execute(_run_steps, self._db._conn, steps, self._synced)
        return done[waiting:]


def _run_steps(
    db: sqlite3.Connection, steps: list[_Step], synced: int | None
) -> list[tuple[list[Any], int]]:
    """In aiosqlite's thread. A statement run to its end leaves its cursor nothing to
    release."""
    done = []
    if synced is not None:
        db.execute(f"PRAGMA synchronous = {SYNCHRONOUS_NORMAL}")
    try:
        for sql, args, many in steps:
            cursor = db.executemany(sql, args) if many else db.execute(sql, args)
            done.append((cursor.fetchall(), cursor.rowcount))
    finally:
        if synced is not None:
            db.execute(f"PRAGMA synchronous = {int(synced)}")
    return done


async def _flocked(fd: int, wait: float) -> None:
    """An exclusive flock on `fd`, tried every few ms (a blocking one would hold a thread)."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if asyncio.get_running_loop().time() >= deadline:
                raise StoreUnavailable(
                    f"another process has been publishing the outbox for {wait:g} s"
                ) from None
            await asyncio.sleep(FLOCK_POLL)


class SQLite:
    """One connection, WAL. Every access runs under an asyncio lock (statements of two
    coroutines must not mix inside one transaction); changes run in `BEGIN IMMEDIATE`, which
    also serialises the writers of other processes (the CLI beside the admin server)."""

    name = "sqlite"

    def __init__(self, db: aiosqlite.Connection, path: str, synchronous: int) -> None:
        self._db = db
        self._path = path
        self._lock = asyncio.Lock()
        self._connection = _SQLiteConnection(db)
        self._bookkeeping = _SQLiteConnection(
            db, synced=synchronous if synchronous > SYNCHRONOUS_NORMAL else None
        )

    @classmethod
    async def open(cls, path: str) -> SQLite:
        """Opens the database at `path`, creating it and its folder if needed."""
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with _sqlite_errors():
            db = await aiosqlite.connect(path, isolation_level=None)  # we say BEGIN ourselves
        try:
            db.row_factory = sqlite3.Row
            with _sqlite_errors():
                await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                await db.execute("PRAGMA journal_mode = WAL")
                await db.execute("PRAGMA foreign_keys = ON")
                [(synchronous,)] = await db.execute_fetchall("PRAGMA synchronous")
        except BaseException:
            await db.close()
            raise
        return cls(db, path, synchronous)

    async def close(self) -> None:
        await self._db.close()

    @contextlib.asynccontextmanager
    async def writing(self, *, alone: bool = True) -> AsyncIterator[Connection]:
        if not alone:  # each statement its own transaction: two trips to the thread fewer
            async with self._lock:
                yield self._bookkeeping
            return
        async with self._lock, self._transaction("BEGIN IMMEDIATE", "COMMIT"):
            yield self._connection

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[Connection]:
        async with self._lock, self._transaction("BEGIN", "ROLLBACK"):
            yield self._connection

    @contextlib.asynccontextmanager
    async def _transaction(self, begin: str, end: str) -> AsyncIterator[None]:
        await self._connection.run_later(begin)  # sent with the first statement
        try:
            yield
            await self._connection.run(end)
        except BaseException:
            self._connection.forget_later()
            if self._db.in_transaction:  # a failed COMMIT (a deferred reference) leaves it open
                await self._db.execute("ROLLBACK")
            raise

    @contextlib.asynccontextmanager
    async def publishing(self, wait: float) -> AsyncIterator[None]:
        if self._path == ":memory:":  # no other process can reach it
            yield
            return
        fd = os.open(f"{self._path}-publish", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            await _flocked(fd, wait)
            yield
        finally:
            os.close(fd)  # which releases the lock, as the end of the process does

    async def schema_version(self, db: Connection) -> int:
        return (await db.fetch("PRAGMA user_version"))[0][0]

    async def set_schema_version(self, db: Connection, version: int) -> None:
        await db.run(f"PRAGMA user_version = {int(version)}")

    async def continue_identity(self, db: Connection, table: str, column: str) -> None:
        """Nothing to do: a new key is the largest + 1, and AUTOINCREMENT's counter follows the
        keys written."""

    async def same_store(self, other: Database) -> bool:
        """The same file (device and inode), whatever the paths; two in memory are two."""
        if not isinstance(other, SQLite) or ":memory:" in (self._path, other._path):
            return False
        return os.path.samefile(self._path, other._path)
