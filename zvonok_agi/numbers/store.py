"""The control plane's store: the source of truth for accounts, numbers, campaigns, requests
and the audit log, on SQLite (the embedded default) or PostgreSQL (`databases`). Plain SQL,
written once for both; the rules live in `rules`, the flow in `service`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from ..routing import scenario as scenarios
from ..routing.model import (
    Account,
    CallbackRule,
    Campaign,
    CampaignKind,
    CampaignState,
    NumberStatus,
    Pool,
)
from ..store.routing_data import FIELDS, Delete, Stored, encode_values, stored_fields
from .databases import (
    Connection,
    Database,
    StoreBusy,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    connect,
)
from .migrations import MIGRATIONS, statements
from .rules import Kind, NumberRecord, Request

__all__ = ["Queries", "Store", "StoreBusy", "StoreConflict", "StoreError", "StoreUnavailable"]

PUBLISHER_WAIT = 10.0  # seconds a publisher waits for another process's to finish
ROUTING_TABLES = {"account": ("accounts", "id"), "number": ("numbers", "did"),
                  "campaign": ("campaigns", "id")}
Imported = tuple[int, list[tuple[int, Stored | Delete]]]  # records written; outbox rows to publish
NumberRows = list[tuple[list[Any], Stored]]  # `number_rows`: a row and its value if new
NUMBER_COLUMNS = ("did", "kind", "region", "pool", "status", "owner", "callback_rule",
                  "inbound_campaign", "reserved_at")  # as _number_values gives them
T = TypeVar("T")
REAL = "DOUBLE PRECISION"  # a REAL column's cast: PostgreSQL's REAL is single precision


def _from_rows(*casts: str | None) -> str:
    """The SELECT of a `{rows}` table's values (`Connection.fetch_each`) in order, each cast to
    its type (None: text). Its WHERE keeps SQLite from reading an upsert's ON as a join's."""
    values = [
        f"value->>{i}" if cast is None else f"CAST(value->>{i} AS {cast})"
        for i, cast in enumerate(casts)
    ]
    return f"SELECT {', '.join(values)} FROM {{rows}} WHERE true"


_NUMBER_CONFLICT = (
    "ON CONFLICT (did) DO UPDATE SET kind = excluded.kind, region = excluded.region, "
    "pool = excluded.pool, status = excluded.status, owner = excluded.owner, "
    "callback_rule = excluded.callback_rule, "
    "inbound_campaign = excluded.inbound_campaign, reserved_at = excluded.reserved_at"
)
_NUMBER_INSERT = (
    "INSERT INTO numbers (did, kind, region, pool, status, owner, callback_rule, "
    "inbound_campaign, reserved_at, added_at)"
)
_PUT_NUMBER = f"{_NUMBER_INSERT} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) {_NUMBER_CONFLICT}"
_CAMPAIGN_CONFLICT = (
    "ON CONFLICT (id) DO UPDATE SET "
    "account = excluded.account, kind = excluded.kind, "
    "accept_inbound = excluded.accept_inbound, state = excluded.state, "
    "caller_id = excluded.caller_id, name = excluded.name, scenario = excluded.scenario"
)
_CAMPAIGN_INSERT = (
    "INSERT INTO campaigns (id, account, kind, accept_inbound, state, caller_id, name, "
    "scenario, created_at)"
)
_PUT_CAMPAIGN = f"{_CAMPAIGN_INSERT} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) {_CAMPAIGN_CONFLICT}"
_DELETE_PUBLISHED = f"DELETE FROM outbox WHERE seq IN ({_from_rows('BIGINT')})"
_PUT_NUMBERS = (
    f"{_NUMBER_INSERT} {_from_rows(*[None] * 8, REAL, REAL)} {_NUMBER_CONFLICT}, "
    "rev = numbers.rev + 1"
)
_PUT_CAMPAIGNS = (
    f"{_CAMPAIGN_INSERT} {_from_rows(None, None, None, 'INTEGER', None, None, None, None, REAL)} "
    f"{_CAMPAIGN_CONFLICT}, rev = campaigns.rev + 1"
)


class Store:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.open_transactions = 0  # of this process, now

    @classmethod
    async def open(cls, target: str | Path, *, pool_size: int = 10) -> Store:
        """Opens the store `target` names (a SQLite file or URL, a PostgreSQL URL: see
        `databases.connect`) and migrates it; a new SQLite file is created, with its folder."""
        database = await connect(target, pool_size=pool_size)
        try:
            await migrate(database)
        except BaseException:
            await database.close()
            raise
        return cls(database)

    async def close(self) -> None:
        await self.database.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def transaction(self, *, alone: bool = True) -> AsyncIterator[Queries]:
        """A write transaction: committed when the block ends, rolled back if it raises. The
        writers of every process run one at a time; `alone=False` is for the outbox's
        bookkeeping only (`Database.writing`)."""
        async with self.database.writing(alone=alone) as db, self._counted():
            yield Queries(db)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[Queries]:
        """A read transaction: one consistent snapshot for several queries."""
        async with self.database.reading() as db, self._counted():
            yield Queries(db)

    def publishing(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Holds the publisher's lock, which one process of all those sharing the store holds
        at a time; waits up to PUBLISHER_WAIT seconds for it (then StoreUnavailable)."""
        return self.database.publishing(PUBLISHER_WAIT)

    @contextlib.asynccontextmanager
    async def _counted(self) -> AsyncIterator[None]:
        self.open_transactions += 1
        try:
            yield
        finally:
            self.open_transactions -= 1


async def migrate(database: Database) -> int:
    """Applies the migrations this database has not seen; returns its version. Each runs in a
    write transaction: of processes starting at once, one migrates, the others then see it."""
    while True:
        async with database.writing() as db:
            version = await database.schema_version(db)
            if version >= len(MIGRATIONS):
                return version
            for statement in statements(MIGRATIONS[version], database.name):
                await db.run(statement)
            await database.set_schema_version(db, version + 1)


class Queries:
    """The SQL, one method per question or change, on a connection inside a transaction."""

    def __init__(self, db: Connection) -> None:
        self.db = db
        # The outbox rows this transaction wrote, each with its record as written: whoever
        # commits them may publish them without reading them back (`Publisher.after_commit`).
        self.outboxed: list[tuple[int, Stored | Delete]] = []

    async def _all(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        return await self.db.fetch(sql, list(args))

    async def _run(self, sql: str, args: Iterable[Any] = ()) -> int:
        return await self.db.run(sql, list(args))

    async def savepoint(self) -> None:
        await self.db.run("SAVEPOINT change")

    async def rollback_to_savepoint(self) -> None:
        await self.db.run("ROLLBACK TO SAVEPOINT change")

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
            where.append("(" + " OR ".join("did LIKE ?" for _ in needles) + ")")
            args.extend(f"%{needle}%" for needle in needles)  # digits: no wildcard in them
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
        await self._run(_PUT_NUMBER, [*_number_values(number), now])
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
        """Changes a number's columns and, in the same statement, its revision (`touch`)."""
        columns = ", ".join(f"{name} = ?" for name in values)
        await self._touch(
            "number", did, f"UPDATE numbers SET {columns}, rev = rev + 1 WHERE did = ?",
            [_sql_value(v) for v in values.values()] + [did],
        )

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
        await self._run(_PUT_CAMPAIGN, _campaign_values(campaign, now))
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
        [row] = await self._all(
            "INSERT INTO requests (account, topic, kind, region, comment, contact, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            [account, topic, kind and kind.value, region, comment, contact, now],
        )
        return Request(row["id"], account, kind, region, now, topic=topic, comment=comment,
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
        await self.db.run_later(  # with the commit: nothing reads it back
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

    # bulk upserts (`zvonok-agi load`): only the records that differ are written, their
    # revisions raised in the same statement; one statement per kind of step and batch
    # (`Connection.fetch_each`). Of a record given twice in a batch, the last counts.

    async def import_accounts(self, accounts: Sequence[Account], now: float) -> Imported:
        accounts = _last_of(accounts)
        current = {a.id: a for a in await self._in("accounts", "id", [a.id for a in accounts])}
        changed = [a for a in accounts if current.get(a.id) != a]
        await self._each(
            "INSERT INTO accounts (id, name, verified, created_at) "
            f"{_from_rows(None, None, 'INTEGER', REAL)} "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, verified = excluded.verified, "
            "rev = accounts.rev + 1",
            [[a.id, a.name, int(a.verified), now] for a in changed],
        )
        return len(changed), await self._to_publish("account", [a.id for a in changed])

    async def import_campaigns(self, campaigns: Sequence[Campaign], now: float) -> Imported:
        """Upserts campaigns; one the file gives no scenario keeps the one it has (set through
        the API, the CLI or the page)."""
        campaigns = _last_of(campaigns)
        current = {c.id: c for c in await self._in("campaigns", "id", [c.id for c in campaigns])}
        campaigns = [
            replace(c, scenario=current[c.id].scenario)
            if c.scenario is None and c.id in current
            else c
            for c in campaigns
        ]
        changed = [c for c in campaigns if current.get(c.id) != c]
        await self._each(_PUT_CAMPAIGNS, [_campaign_values(c, now) for c in changed])
        return len(changed), await self._to_publish("campaign", [c.id for c in changed])

    async def import_numbers(self, rows: NumberRows, now: float) -> Imported:
        """Upserts numbers (`number_rows`); one that keeps its owner keeps its reservation
        time."""
        current = {row["did"]: row for row in await self._rows_in("numbers", "did",
                                                                  [row[0] for row, _ in rows])}
        changed, touched, stored = [], [], {}
        for row, new in rows:
            did = row[0]
            before = current.get(did)
            if before is None:
                touched.append(did)
                stored[did] = new
                changed.append(row)
                continue
            if row[5] and before["owner"] == row[5]:
                row = [*row[:8], before["reserved_at"], now]
            if row[:9] == [before[column] for column in NUMBER_COLUMNS]:
                continue
            if row[3:8] != [before[column] for column in NUMBER_COLUMNS[3:8]]:
                touched.append(did)  # its routing changed, not only kind or region
            # Its value once written (the writer's lock is held): the upsert adds 1 to the
            # revision.
            value = encode_values(before["rev"] + 1, stored_fields("number", row[3:8]))
            stored[did] = Stored("number", did, value)
            changed.append(row)
        await self._each(_PUT_NUMBERS, changed)
        return len(changed), await self._to_publish("number", touched, stored)

    async def _each(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        return await self.db.fetch_each(sql, rows) if rows else []

    async def _to_publish(
        self, kind: str, keys: Sequence[str], values: Mapping[str, Stored] | None = None
    ) -> list[tuple[int, Stored | Delete]]:
        """Names `keys` in the outbox; its rows, each with the value the publisher will send
        (`values`, as written; else read back; a key of none is gone), so that whoever
        committed them may send them without reading them again (`outboxed`)."""
        if values is None:
            values = {key: Stored(kind, key, value)
                      for key, value in (await self.routing_values(kind, keys)).items()}
        inserted = await self._each(
            f"INSERT INTO outbox (kind, key) {_from_rows(None, None)} RETURNING seq, key",
            [[kind, key] for key in keys],
        )
        return self._outboxed(kind, inserted, values)

    def _outboxed(
        self, kind: str, inserted: Iterable[Any], values: Mapping[str, Stored]
    ) -> list[tuple[int, Stored | Delete]]:
        rows = [(seq, values.get(key) or Delete(kind, key)) for seq, key in inserted]
        self.outboxed += rows
        return rows

    async def numbers_in(self, dids: Iterable[str]) -> list[NumberRecord]:
        return await self._in("numbers", "did", dids)

    async def campaigns_in(self, ids: Iterable[str]) -> list[Campaign]:
        return await self._in("campaigns", "id", ids)

    async def _in(self, table: str, column: str, keys: Iterable[str]) -> list[Any]:
        """The rows of `table` whose `column` is one of `keys`, as records."""
        return [_RECORD_OF[table](row) for row in await self._rows_in(table, column, keys)]

    async def _rows_in(
        self, table: str, column: str, keys: Iterable[str], columns: str = "*"
    ) -> list[Any]:
        return await self._each(
            f"SELECT {columns} FROM {table} WHERE {column} IN ({_from_rows(None)})",
            [[key] for key in keys],
        )

    # the outbox: what still has to reach Redis

    async def touch(self, kind: str, key: str) -> None:
        """Marks a record changed: its revision goes up, the outbox names it for publishing."""
        table, column = ROUTING_TABLES[kind]
        await self._touch(kind, key, f"UPDATE {table} SET rev = rev + 1 WHERE {column} = ?", [key])

    async def _touch(self, kind: str, key: str, update: str, args: Sequence[Any]) -> None:
        """`touch` with `update`, a statement that raises the record's revision: it returns the
        record as written, and the outbox names it, in one trip to the database."""
        rows, inserted = await self.db.fetch_steps([
            (f"{update} RETURNING {_routing_columns(kind)}", args),
            ("INSERT INTO outbox (kind, key) VALUES (?, ?) RETURNING seq, key", [kind, key]),
        ])
        self._outboxed(kind, inserted, _stored(kind, rows))

    async def _touch_all(self, kind: str, keys: Sequence[str]) -> None:
        table, column = ROUTING_TABLES[kind]
        rows = await self._each(
            f"UPDATE {table} SET rev = rev + 1 WHERE {column} IN ({_from_rows(None)}) "
            f"RETURNING {_routing_columns(kind)}",
            [[key] for key in keys],
        )
        await self._to_publish(kind, keys, _stored(kind, rows))

    async def outbox(self, limit: int) -> list[tuple[int, str, str]]:
        """The oldest rows of the outbox: (seq, kind, key)."""
        rows = await self._all("SELECT seq, kind, key FROM outbox ORDER BY seq LIMIT ?", [limit])
        return [(r["seq"], r["kind"], r["key"]) for r in rows]

    async def outbox_size(self) -> int:
        return (await self._all("SELECT count(*) AS n FROM outbox"))[0]["n"]

    async def published(self, seqs: Sequence[int]) -> None:
        await self._each(_DELETE_PUBLISHED, [[seq] for seq in seqs])

    async def published_then_others(self, seqs: Sequence[int]) -> bool:
        """`published`, and whether the outbox holds other rows, in one trip."""
        _, others = await self.db.fetch_steps([
            self.db.each(_DELETE_PUBLISHED, [[seq] for seq in seqs]),
            ("SELECT seq FROM outbox LIMIT 1", []),
        ])
        return bool(others)

    async def routing_values(self, kind: str, keys: Iterable[str]) -> dict[str, str]:
        """The records named as Redis stores them (`encode_values`); a missing one is absent."""
        table, column = ROUTING_TABLES[kind]
        rows = await self._rows_in(table, column, keys, _routing_columns(kind))
        return {row[0]: _routing_value(kind, row) for row in rows}

    async def routing_page(self, kind: str, after: str | None, limit: int) -> list[tuple[str, str]]:
        """(key, stored value) of one kind in key order, the first `limit` after `after`."""
        table, column = ROUTING_TABLES[kind]
        rows = await self._all(
            f"SELECT {_routing_columns(kind)} FROM {table} WHERE {column} > ? "
            f"ORDER BY {column} LIMIT ?",
            ["" if after is None else after, limit],
        )
        return [(row[0], _routing_value(kind, row)) for row in rows]

    async def outrank(self, kind: str, revs: Mapping[str, int]) -> None:
        """Raises each record's revision above the one given (Redis's, found newer than the
        store's: the store was restored from an older copy) and names it for publishing."""
        table, column = ROUTING_TABLES[kind]
        await self.db.run_many(
            f"UPDATE {table} SET rev = CASE WHEN rev > ? THEN rev ELSE ? END WHERE {column} = ?",
            [[rev, rev, key] for key, rev in revs.items()],
        )
        await self._touch_all(kind, list(revs))


def number_rows(numbers: Sequence[NumberRecord], now: float) -> NumberRows:
    """Numbers as `Queries.import_numbers` writes them, built before their transaction (no
    store needed): each one's row (NUMBER_COLUMNS and added_at) and, for a new one, its value
    once written: a new row's revision is the column's default, 0. Reserved: since `now`."""
    rows = []
    for number in _last_of(numbers, "did"):
        values = _number_values(number)
        if number.owner:
            values[-1] = now
        value = encode_values(0, stored_fields("number", values[3:8]))
        rows.append(([*values, now], Stored("number", number.did, value)))
    return rows


def _last_of(records: Sequence[T], key: str = "id") -> list[T]:
    """`records` without repeats of their `key`: the last of them counts, where the first was."""
    return list({getattr(record, key): record for record in records}.values())


def _where(**equal: Any) -> tuple[str, list[Any]]:
    """` WHERE a = ? AND b = ?` for the columns given a value (None: any), and the values."""
    given = {column: value for column, value in equal.items() if value is not None}
    if not given:
        return "", []
    return " WHERE " + " AND ".join(f"{c} = ?" for c in given), list(given.values())


def _account(row: Any) -> Account:
    return Account(row["id"], bool(row["verified"]), row["name"])


def _number(row: Any) -> NumberRecord:
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
    # The enums are str: both drivers bind them as their text, and they compare equal to it.
    return [n.did, n.kind, n.region, n.pool, n.status, n.owner, n.callback_rule,
            n.inbound_campaign, n.reserved_at]


def _campaign_values(c: Campaign, now: float) -> list[Any]:
    return [c.id, c.account, c.kind.value, int(c.accept_inbound), c.state.value, c.caller_id,
            c.name, _scenario_text(c), now]


def _scenario_text(c: Campaign) -> str | None:
    """The scenario as the store keeps it: its stored form, as JSON text."""
    return None if c.scenario is None else _json(scenarios.stored(c.scenario))


_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _campaign(row: Any) -> Campaign:
    scenario = row["scenario"]
    return Campaign(
        id=row["id"],
        account=row["account"],
        kind=CampaignKind(row["kind"]),
        accept_inbound=bool(row["accept_inbound"]),
        state=CampaignState(row["state"]),
        caller_id=row["caller_id"],
        name=row["name"],
        scenario=None if scenario is None else scenarios.from_stored(json.loads(scenario)),
    )


def _request(row: Any) -> Request:
    return Request(
        row["id"], row["account"], row["kind"] and Kind(row["kind"]), row["region"], row["at"],
        row["status"], row["closed_at"], row["closed_by"], row["note"], row["topic"],
        row["comment"], row["contact"],
    )


def _stored(kind: str, rows: Iterable[Any]) -> dict[str, Stored]:
    """Rows of `_routing_columns` as the publisher sends them, by key."""
    return {row[0]: Stored(kind, row[0], _routing_value(kind, row)) for row in rows}


def _routing_value(kind: str, row: Any) -> str:
    """A row of `_routing_columns` as Redis stores the record."""
    return encode_values(row[1], stored_fields(kind, list(row[2:])))


def _routing_columns(kind: str) -> str:
    """Key, revision and the routing fields, in the order of the stored value."""
    return ", ".join([ROUTING_TABLES[kind][1], "rev", *FIELDS[kind]])


_RECORD_OF = {"accounts": _account, "numbers": _number, "campaigns": _campaign}


def _sql_value(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value
