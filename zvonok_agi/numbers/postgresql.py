"""The store on PostgreSQL, through asyncpg (the "postgresql" extra): see `databases`."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import asyncpg

from . import databases
from .databases import (
    Connection,
    Database,
    StoreBusy,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    describe,
    json_array,
)

# SQLSTATEs that mean "busy": 55P03 lock_not_available (lock_timeout: the writers' lock), and
# the transaction rollback class (serialization failure, deadlock). Those that mean "away for
# now": connection exception, insufficient resources, operator intervention (shutdown, a
# cancelled statement).
_PG_BUSY = ("55P03", "40")
_PG_UNAVAILABLE = ("08", "53", "57")


@contextlib.contextmanager
def _pg_errors() -> Iterator[None]:
    try:
        yield
    except asyncpg.PostgresError as exc:
        state = exc.sqlstate or ""
        if state.startswith("23"):
            raise StoreConflict(str(exc)) from exc
        if state.startswith(_PG_BUSY):
            raise StoreBusy(str(exc)) from exc
        if state.startswith(_PG_UNAVAILABLE):
            raise StoreUnavailable(str(exc)) from exc
        raise
    except (OSError, TimeoutError, asyncpg.ConnectionDoesNotExistError) as exc:  # a lost link
        raise StoreUnavailable(str(exc) or type(exc).__name__) from exc


@lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...` (none of the store's SQL has a `?` in a
    quoted string)."""
    parts = sql.split("?")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)) + parts[-1]


def _changed(status: str) -> int:
    """The rows a command changed, from its status ("UPDATE 3", "INSERT 0 1")."""
    count = status.rsplit(" ", 1)[-1]
    return int(count) if count.isdigit() else 0


def lock_key(schema: str, purpose: str) -> int:
    """An advisory lock's key: one per schema, so that two installs sharing a database in
    schemas of their own never wait for each other."""
    digest = hashlib.blake2b(f"zvonok-agi/{schema}/{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class _PostgreSQLConnection:
    def __init__(self, db: Any) -> None:
        self._db = db

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with _pg_errors():
            return await self._db.fetch(numbered(sql), *args)

    async def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        with _pg_errors():
            return _changed(await self._db.execute(numbered(sql), *args))

    async def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            with _pg_errors():
                await self._db.executemany(numbered(sql), rows)

    async def fetch_steps(self, steps: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        return [await self.fetch(sql, args) for sql, args in steps]

    async def run_later(self, sql: str, args: Sequence[Any] = ()) -> None:
        await self.run(sql, args)

    def each(self, sql: str, rows: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
        return sql.format(rows="json_array_elements(?)"), [json_array(rows)]

    async def fetch_each(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        return await self.fetch(*self.each(sql, rows))

    async def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        with _pg_errors():  # COPY: several times faster than as many INSERTs
            await self._db.copy_records_to_table(table, records=rows, columns=list(columns))

    async def stream(self, sql: str, size: int) -> AsyncIterator[list[Any]]:
        with _pg_errors():
            cursor = await self._db.cursor(numbered(sql))  # inside the transaction
            while rows := await cursor.fetch(size):
                yield rows


class PostgreSQL:
    """A pool of asyncpg connections; each transaction takes one. Changes run in READ
    COMMITTED after `pg_advisory_xact_lock`: one writer at a time, as on SQLite, and each
    statement sees every commit made before it. `lock_timeout` is the busy timeout."""

    name = "postgresql"

    def __init__(self, pool: Any, schema: str) -> None:
        self._pool = pool
        self.schema = schema
        self._writer = lock_key(schema, "writer")
        self._publisher = lock_key(schema, "publisher")

    @classmethod
    async def open(cls, url: str, pool_size: int) -> PostgreSQL:
        with _pg_errors():
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=databases.CONNECT_TIMEOUT,
                server_settings={
                    "lock_timeout": str(databases.BUSY_TIMEOUT_MS),
                    "application_name": "zvonok-agi",
                },
            )
        try:
            async with pool.acquire(timeout=databases.CONNECT_TIMEOUT) as db:
                with _pg_errors():
                    schema = await db.fetchval("SELECT current_schema()")
            if schema is None:
                raise StoreError(
                    f"{describe(url)}: no schema of the search_path exists (create it, or "
                    "name one that does: ?search_path=NAME in the URL)"
                )
        except BaseException:
            await pool.close()
            raise
        return cls(pool, schema)

    async def close(self) -> None:
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        with _pg_errors():
            db = await self._pool.acquire(timeout=databases.CONNECT_TIMEOUT)
        try:
            yield db
        finally:
            await self._pool.release(db)

    @contextlib.asynccontextmanager
    async def writing(self, *, alone: bool = True) -> AsyncIterator[Connection]:
        if alone:
            begin = f"BEGIN; SELECT pg_advisory_xact_lock({self._writer})"  # one round trip
        else:
            begin = "BEGIN; SET LOCAL synchronous_commit = off"
        async with self._connection() as db, self._transaction(db, begin, "COMMIT"):
            yield _PostgreSQLConnection(db)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[Connection]:
        begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        async with self._connection() as db, self._transaction(db, begin, "ROLLBACK"):
            yield _PostgreSQLConnection(db)

    @contextlib.asynccontextmanager
    async def _transaction(self, db: Any, begin: str, end: str) -> AsyncIterator[None]:
        try:
            with _pg_errors():
                await db.execute(begin)  # the writer's lock may time out: the rest is rolled back
            yield
            with _pg_errors():
                await db.execute(end)  # a failed COMMIT ends the transaction too
        except BaseException:
            if db.is_in_transaction() and not db.is_closed():
                with contextlib.suppress(Exception):  # the link is gone: so is the transaction
                    await db.execute("ROLLBACK")
            raise

    @contextlib.asynccontextmanager
    async def publishing(self, wait: float) -> AsyncIterator[None]:
        async with self._connection() as db:  # the session holds the lock: the pool resets it
            try:
                with _pg_errors():
                    await db.execute(
                        f"SET lock_timeout = {int(wait * 1000)}; "
                        f"SELECT pg_advisory_lock({self._publisher})"
                    )
            except StoreUnavailable as exc:
                raise StoreUnavailable(
                    f"another process has been publishing the outbox for {wait:g} s ({exc})"
                ) from exc
            try:
                yield
            finally:
                # A lost link took the lock with it (asyncpg hands such a connection back to
                # the pool at once): nothing to unlock, and the block's own error stands.
                with contextlib.suppress(asyncpg.InterfaceError, StoreUnavailable), _pg_errors():
                    await db.execute(f"SELECT pg_advisory_unlock({self._publisher})")

    async def schema_version(self, db: Connection) -> int:
        [[table]] = await db.fetch("SELECT to_regclass('schema_version')")
        if table is None:
            await db.run("CREATE TABLE schema_version (version BIGINT NOT NULL)")
            await db.run("INSERT INTO schema_version (version) VALUES (0)")
        return (await db.fetch("SELECT version FROM schema_version"))[0][0]

    async def set_schema_version(self, db: Connection, version: int) -> None:
        await db.run("UPDATE schema_version SET version = ?", [version])

    async def continue_identity(self, db: Connection, table: str, column: str) -> None:
        await db.fetch(
            f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
            f"coalesce(max({column}), 0) + 1, false) FROM {table}"
        )

    async def same_store(self, other: Database) -> bool:
        """The same schema of the same database on the same server: a lock taken with a
        random key through this pool is looked for through the other's (pg_locks shows the
        locks of the server it runs on, each with its database). Names and addresses can
        differ, and two servers cloned from one backup share every identifier: the lock
        cannot be seen from anywhere else."""
        if not isinstance(other, PostgreSQL) or other.schema != self.schema:
            return False
        key = (secrets.randbits(31), secrets.randbits(31))
        async with self._connection() as mine, other._connection() as theirs:
            with _pg_errors():
                await mine.execute("SELECT pg_advisory_lock($1, $2)", *key)
                try:
                    seen = await theirs.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND database = (SELECT oid FROM pg_database "
                        "WHERE datname = current_database()) "
                        "AND classid = $1 AND objid = $2 AND objsubid = 2",
                        *key,
                    )
                finally:
                    await mine.execute("SELECT pg_advisory_unlock($1, $2)", *key)
        return seen > 0
