"""The control plane's SQLite store: the source of truth for accounts, numbers, campaigns,
requests and the audit log. Plain SQL; the rules live in `rules`, the flow in `service`.

One connection per store, WAL. Every access runs under an asyncio lock (statements of two
coroutines must not mix inside one transaction); changes run in `BEGIN IMMEDIATE`, which also
serialises writers of other processes (the CLI beside the admin API).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterable
from enum import Enum
from pathlib import Path
from typing import Any

import aiosqlite

from ..routing.model import (
    Account,
    CallbackRule,
    Campaign,
    CampaignKind,
    CampaignState,
    NumberStatus,
    Pool,
)
from .migrations import MIGRATIONS
from .rules import Kind, NumberRecord, Request

BUSY_TIMEOUT_MS = 5000


class Store:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        """Opens (creating it and its folder if needed) and migrates the database at `path`."""
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(str(path), isolation_level=None)  # we say BEGIN ourselves
        try:
            db.row_factory = sqlite3.Row
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await migrate(db)
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Queries]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield Queries(self._db)
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[Queries]:
        """A read transaction: one consistent snapshot for several queries."""
        async with self._lock:
            await self._db.execute("BEGIN")
            try:
                yield Queries(self._db)
            finally:
                await self._db.execute("ROLLBACK")


async def migrate(db: aiosqlite.Connection) -> int:
    """Applies the migrations this database has not seen; returns its version."""
    while True:
        await db.execute("BEGIN IMMEDIATE")
        try:
            version = (await _one(db, "PRAGMA user_version"))[0]
            if version >= len(MIGRATIONS):
                await db.execute("ROLLBACK")
                return version
            for statement in MIGRATIONS[version]:
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        await db.execute("COMMIT")


async def _one(db: aiosqlite.Connection, sql: str, args: Iterable[Any] = ()) -> Any:
    async with db.execute(sql, tuple(args)) as cursor:
        return await cursor.fetchone()


class Queries:
    """The SQL, one method per question or change, on a connection inside a transaction."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def _all(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async with self.db.execute(sql, tuple(args)) as cursor:
            return list(await cursor.fetchall())

    async def _run(self, sql: str, args: Iterable[Any] = ()) -> int:
        async with self.db.execute(sql, tuple(args)) as cursor:
            return cursor.rowcount

    async def savepoint(self) -> None:
        await self.db.execute("SAVEPOINT change")

    async def rollback_to_savepoint(self) -> None:
        await self.db.execute("ROLLBACK TO change")

    # accounts

    async def account(self, account_id: str) -> Account | None:
        rows = await self._all("SELECT * FROM accounts WHERE id = ?", [account_id])
        return _account(rows[0]) if rows else None

    async def accounts(self) -> list[Account]:
        return [_account(r) for r in await self._all("SELECT * FROM accounts ORDER BY id")]

    async def put_account(self, account: Account, now: float) -> None:
        await self._run(
            "INSERT INTO accounts (id, name, verified, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, verified = excluded.verified",
            [account.id, account.name, int(account.verified), now],
        )
        await self.touch("account", account.id)

    # numbers

    async def number(self, did: str) -> NumberRecord | None:
        rows = await self._all("SELECT * FROM numbers WHERE did = ?", [did])
        return _number(rows[0]) if rows else None

    async def numbers(
        self,
        *,
        account: str | None = None,
        status: NumberStatus | None = None,
        needles: list[str] | None = None,
    ) -> list[NumberRecord]:
        """With an account: its reserved numbers and the service pool it may dial from."""
        where, args = [], []
        if account is not None:
            where.append("(owner = ? OR pool = 'service')")
            args.append(account)
        if status is not None:
            where.append("status = ?")
            args.append(status.value)
        if needles is not None:
            if not needles:
                return []
            where.append("(" + " OR ".join("instr(did, ?) > 0" for _ in needles) + ")")
            args.extend(needles)
        sql = "SELECT * FROM numbers"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY pool, did"  # reservable first, then the service pool
        return [_number(r) for r in await self._all(sql, args)]

    async def available_counts(self) -> dict[tuple[Kind, str], int]:
        rows = await self._all(
            "SELECT kind, region, count(*) AS n FROM numbers WHERE pool = 'reservable' "
            "AND owner IS NULL AND status = 'active' GROUP BY kind, region"
        )
        return {(Kind(r["kind"]), r["region"]): r["n"] for r in rows}

    async def regions(self) -> list[str]:
        """Every region a number of ours is in (reserved, disabled or not)."""
        return [r["region"] for r in await self._all("SELECT DISTINCT region FROM numbers")]

    async def available(self, kind: Kind, region: str, limit: int) -> list[NumberRecord]:
        rows = await self._all(
            "SELECT * FROM numbers WHERE pool = 'reservable' AND owner IS NULL "
            "AND status = 'active' AND kind = ? AND region = ? ORDER BY did LIMIT ?",
            [kind.value, region, limit],
        )
        return [_number(r) for r in rows]

    async def reserved_counts(self, account: str | None) -> dict[str, dict[str, int]]:
        """{kind: {status: n}} of reserved numbers (of one account, or of all)."""
        sql = "SELECT kind, status, count(*) AS n FROM numbers WHERE owner IS NOT NULL"
        args: list[Any] = []
        if account is not None:
            sql += " AND owner = ?"
            args.append(account)
        counts: dict[str, dict[str, int]] = {}
        for r in await self._all(sql + " GROUP BY kind, status", args):
            counts.setdefault(r["kind"], {})[r["status"]] = r["n"]
        return counts

    async def insert_number(self, number: NumberRecord, now: float) -> None:
        await self._run(
            "INSERT INTO numbers (did, kind, region, pool, status, owner, callback_rule, "
            "inbound_campaign, reserved_at, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [*_number_values(number), now],
        )
        await self.touch("number", number.did)

    async def put_number(self, number: NumberRecord, now: float) -> None:
        await self._run(
            "INSERT INTO numbers (did, kind, region, pool, status, owner, callback_rule, "
            "inbound_campaign, reserved_at, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (did) DO UPDATE SET kind = excluded.kind, region = excluded.region, "
            "pool = excluded.pool, status = excluded.status, owner = excluded.owner, "
            "callback_rule = excluded.callback_rule, "
            "inbound_campaign = excluded.inbound_campaign, reserved_at = excluded.reserved_at",
            [*_number_values(number), now],
        )
        await self.touch("number", number.did)

    async def claim_number(self, did: str, account: str, now: float) -> bool:
        """Reserves an available number; False when another account was faster."""
        changed = await self._run(
            "UPDATE numbers SET owner = ?, reserved_at = ?, callback_rule = 'as_campaign', "
            "inbound_campaign = NULL WHERE did = ? AND pool = 'reservable' "
            "AND owner IS NULL AND status = 'active'",
            [account, now, did],
        )
        if changed:
            await self.touch("number", did)
        return changed == 1

    async def update_number(self, did: str, **values: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in values)
        await self._run(
            f"UPDATE numbers SET {columns} WHERE did = ?",
            [_sql_value(v) for v in values.values()] + [did],
        )
        await self.touch("number", did)

    async def bound_to(self, campaign_id: str) -> list[str]:
        rows = await self._all(
            "SELECT did FROM numbers WHERE inbound_campaign = ? ORDER BY did", [campaign_id]
        )
        return [r["did"] for r in rows]

    # campaigns

    async def campaign(self, campaign_id: str) -> Campaign | None:
        rows = await self._all("SELECT * FROM campaigns WHERE id = ?", [campaign_id])
        return _campaign(rows[0]) if rows else None

    async def campaigns(
        self, *, account: str | None = None, caller_id: str | None = None
    ) -> list[Campaign]:
        where, args = _where(account=account, caller_id=caller_id)
        return [_campaign(r) for r in await self._all(f"SELECT * FROM campaigns{where} "
                                                      "ORDER BY id", args)]

    async def put_campaign(self, campaign: Campaign, now: float) -> None:
        await self._run(
            "INSERT INTO campaigns (id, account, kind, accept_inbound, state, caller_id, "
            "name, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "account = excluded.account, kind = excluded.kind, "
            "accept_inbound = excluded.accept_inbound, state = excluded.state, "
            "caller_id = excluded.caller_id, name = excluded.name",
            [
                campaign.id,
                campaign.account,
                campaign.kind.value,
                int(campaign.accept_inbound),
                campaign.state.value,
                campaign.caller_id,
                campaign.name,
                now,
            ],
        )
        await self.touch("campaign", campaign.id)

    async def reserved_count(self, account: str) -> int:
        rows = await self._all("SELECT count(*) AS n FROM numbers WHERE owner = ?", [account])
        return rows[0]["n"]

    # requests

    async def open_request(self, account: str, kind: Kind, region: str) -> Request | None:
        """The account's open request for numbers of this kind and region."""
        rows = await self._all(
            "SELECT * FROM requests WHERE status = 'open' AND account = ? AND kind = ? "
            "AND region = ? AND topic = 'numbers' ORDER BY id LIMIT 1",
            [account, kind.value, region],
        )
        return _request(rows[0]) if rows else None

    async def open_requests(self, account: str) -> int:
        rows = await self._all(
            "SELECT count(*) AS n FROM requests WHERE status = 'open' AND account = ?", [account]
        )
        return rows[0]["n"]

    async def add_request(
        self, account: str, kind: Kind | None, region: str | None, now: float,
        topic: str = "numbers", comment: str | None = None, contact: str | None = None,
    ) -> Request:
        async with self.db.execute(
            "INSERT INTO requests (account, topic, kind, region, comment, contact, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [account, topic, kind and kind.value, region, comment, contact, now],
        ) as cursor:
            request_id = cursor.lastrowid
        assert request_id is not None
        return Request(request_id, account, kind, region, now, topic=topic, comment=comment,
                       contact=contact)

    async def request(self, request_id: int) -> Request | None:
        rows = await self._all("SELECT * FROM requests WHERE id = ?", [request_id])
        return _request(rows[0]) if rows else None

    async def close_request(
        self, request_id: int, now: float, closed_by: str, note: str | None
    ) -> None:
        await self._run(
            "UPDATE requests SET status = 'closed', closed_at = ?, closed_by = ?, note = ? "
            "WHERE id = ?",
            [now, closed_by, note, request_id],
        )

    async def requests(
        self, status: str | None = None, account: str | None = None
    ) -> list[Request]:
        where, args = _where(status=status, account=account)
        return [_request(r) for r in await self._all(f"SELECT * FROM requests{where} "
                                                     "ORDER BY id", args)]

    # audit

    async def audit(
        self,
        at: float,
        actor: str,
        action: str,
        subject: str,
        account: str | None,
        outcome: str,
        detail: dict[str, Any],
    ) -> None:
        await self._run(
            "INSERT INTO audit (at, actor, action, subject, account, outcome, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                at,
                actor,
                action,
                subject,
                account,
                outcome,
                json.dumps(detail, ensure_ascii=False, sort_keys=True),
            ],
        )

    async def audit_log(
        self, subject: str | None = None, limit: int = 100, account: str | None = None
    ) -> list[dict]:
        where, args = _where(subject=subject, account=account)
        rows = await self._all(f"SELECT * FROM audit{where} ORDER BY id DESC LIMIT ?",
                               [*args, limit])
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]

    # the outbox: what still has to reach Redis

    async def touch(self, kind: str, key: str) -> None:
        await self._run("INSERT INTO outbox (kind, key) VALUES (?, ?)", [kind, key])

    async def pending(self) -> list[tuple[int, str, str]]:
        rows = await self._all("SELECT seq, kind, key FROM outbox ORDER BY seq")
        return [(r["seq"], r["kind"], r["key"]) for r in rows]

    async def published(self, up_to: int) -> None:
        await self._run("DELETE FROM outbox WHERE seq <= ?", [up_to])


def _where(**equal: Any) -> tuple[str, list[Any]]:
    """` WHERE a = ? AND b = ?` for the columns given a value (None: any), and the values."""
    given = {column: value for column, value in equal.items() if value is not None}
    if not given:
        return "", []
    return " WHERE " + " AND ".join(f"{c} = ?" for c in given), list(given.values())


def _account(row: sqlite3.Row) -> Account:
    return Account(row["id"], bool(row["verified"]), row["name"])


def _number(row: sqlite3.Row) -> NumberRecord:
    return NumberRecord(
        did=row["did"],
        kind=Kind(row["kind"]),
        region=row["region"],
        pool=Pool(row["pool"]),
        status=NumberStatus(row["status"]),
        owner=row["owner"],
        callback_rule=CallbackRule(row["callback_rule"]),
        inbound_campaign=row["inbound_campaign"],
        reserved_at=row["reserved_at"],
    )


def _number_values(n: NumberRecord) -> list[Any]:
    return [
        n.did,
        n.kind.value,
        n.region,
        n.pool.value,
        n.status.value,
        n.owner,
        n.callback_rule.value,
        n.inbound_campaign,
        n.reserved_at,
    ]


def _campaign(row: sqlite3.Row) -> Campaign:
    return Campaign(
        id=row["id"],
        account=row["account"],
        kind=CampaignKind(row["kind"]),
        accept_inbound=bool(row["accept_inbound"]),
        state=CampaignState(row["state"]),
        caller_id=row["caller_id"],
        name=row["name"],
    )


def _request(row: sqlite3.Row) -> Request:
    return Request(
        row["id"], row["account"], row["kind"] and Kind(row["kind"]), row["region"], row["at"],
        row["status"], row["closed_at"], row["closed_by"], row["note"], row["topic"],
        row["comment"], row["contact"],
    )


def _sql_value(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value
