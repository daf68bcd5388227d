"""Routing data in Redis: accounts, numbers, campaigns. Every write goes through this module.

Layout (prefix `zv:` by default):
  account:<id>   hash  verified, name
  number:<did>   hash  pool, status, owner, callback_rule, inbound_campaign
  campaign:<id>  hash  account, kind, accept_inbound, state, caller_id (empty: service pool),
                       name
  accounts / numbers / campaigns   sets of ids, so a full load needs no SCAN
  routing:version   incremented by every write, in the same transaction
  routing (pub/sub channel)   "<kind>:<id>" after every write

The engine keeps the whole routing data in memory (`RoutingCache`) and follows changes through
pub/sub, with the version as a safety net for missed messages: a call to a reserved number still
reaches its bound inbound campaign while Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from ..metrics import METRICS
from ..routing.model import (
    Account,
    CallbackRule,
    Campaign,
    CampaignKind,
    CampaignState,
    Number,
    NumberStatus,
    Pool,
)
from ..tasks import LoopErrors, cancel_and_wait, cancel_requested, run_every

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RoutingSnapshot:
    version: int = -1
    accounts: dict[str, Account] = field(default_factory=dict)
    numbers: dict[str, Number] = field(default_factory=dict)
    campaigns: dict[str, Campaign] = field(default_factory=dict)


class RoutingData:
    def __init__(self, redis: aioredis.Redis, prefix: str = "zv:") -> None:
        self.redis = redis
        self.prefix = prefix
        self.channel = f"{prefix}routing"
        self.version_key = f"{prefix}routing:version"

    # writes

    async def put_account(self, account: Account) -> None:
        await self._write("account", account.id, _account_fields(account))

    async def put_number(self, number: Number) -> None:
        await self._write("number", number.did, _number_fields(number))

    async def put_campaign(self, campaign: Campaign) -> None:
        await self._write("campaign", campaign.id, _campaign_fields(campaign))

    async def delete_number(self, did: str) -> None:
        await self._write("number", did, None)

    async def delete_campaign(self, campaign_id: str) -> None:
        await self._write("campaign", campaign_id, None)

    async def delete_account(self, account_id: str) -> None:
        await self._write("account", account_id, None)

    async def _write(self, kind: str, key: str, mapping: dict[str, str] | None) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            item_key = f"{self.prefix}{kind}:{key}"
            pipe.delete(item_key)
            if mapping is None:
                pipe.srem(f"{self.prefix}{kind}s", key)
            else:
                pipe.hset(item_key, mapping=mapping)
                pipe.sadd(f"{self.prefix}{kind}s", key)
            pipe.incr(self.version_key)
            pipe.publish(self.channel, f"{kind}:{key}")
            await pipe.execute()

    # reads

    async def version(self) -> int:
        return int(await self.redis.get(self.version_key) or 0)

    async def load(self) -> RoutingSnapshot:
        """The whole routing data, consistent with one version (retried if a write races)."""
        for _ in range(5):
            version = await self.version()
            ids = {}
            async with self.redis.pipeline(transaction=False) as pipe:
                for kind in ("account", "number", "campaign"):
                    pipe.smembers(f"{self.prefix}{kind}s")
                members = await pipe.execute()
            for kind, found in zip(("account", "number", "campaign"), members, strict=True):
                ids[kind] = sorted(_text(item) for item in found)
            async with self.redis.pipeline(transaction=False) as pipe:
                for kind, keys in ids.items():
                    for key in keys:
                        pipe.hgetall(f"{self.prefix}{kind}:{key}")
                pipe.get(self.version_key)
                rows = await pipe.execute()
            if int(rows[-1] or 0) != version:
                continue
            return _snapshot(version, ids, rows[:-1])
        raise RedisError("routing data kept changing during the load")


class RoutingCache:
    """The engine's in-memory copy of the routing data, kept current.

    `snapshot` is always usable: the last good copy stays while Redis is away.
    """

    def __init__(self, data: RoutingData, refresh_interval: float = 1.0) -> None:
        self.data = data
        self.refresh_interval = refresh_interval
        self.snapshot = RoutingSnapshot()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.on_reload: Callable[[RoutingSnapshot], Awaitable[None] | None] | None = None

    async def start(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.reload()
        self._tasks = [
            asyncio.create_task(self._follow_changes(), name="routing-pubsub"),
            asyncio.create_task(self._poll_version(), name="routing-version"),
            asyncio.create_task(self._reloader(), name="routing-reload"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []

    async def reload(self) -> None:
        snapshot = await self.data.load()
        if snapshot.version != self.snapshot.version:
            self.snapshot = snapshot
            log.info(
                "routing data loaded",
                version=snapshot.version,
                numbers=len(snapshot.numbers),
                campaigns=len(snapshot.campaigns),
            )

    # Each loop rides out any failure (logged, counted, see zvonok_agi.tasks), and ends when
    # its cancellation was swallowed or turned into a store error by redis-py: the request
    # is still on record.
    async def _reloader(self) -> None:
        errors = LoopErrors("routing-reload")
        while not cancel_requested():
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.reload()
            except Exception as exc:
                if cancel_requested():
                    return
                if isinstance(exc, RedisError | OSError):
                    METRICS.store_error("routing_data")
                errors.failed(exc, kept_version=self.snapshot.version)
                await asyncio.sleep(self.refresh_interval)
            else:
                errors.succeeded()

    async def _follow_changes(self) -> None:
        errors = LoopErrors("routing-pubsub")
        while not cancel_requested():
            try:
                async with self.data.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.data.channel)
                    errors.succeeded()
                    self._dirty.set()  # changes made while we were not listening
                    while not cancel_requested():
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self.refresh_interval
                        )
                        if message is not None:
                            self._dirty.set()
            except Exception as exc:
                if cancel_requested():
                    return
                errors.failed(exc)
                await asyncio.sleep(self.refresh_interval)

    async def _poll_version(self) -> None:
        await run_every(self.refresh_interval, self._check_version, LoopErrors("routing-version"))

    async def _check_version(self) -> None:
        if await self.data.version() != self.snapshot.version:
            self._dirty.set()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _account_fields(account: Account) -> dict[str, str]:
    return {"verified": "1" if account.verified else "0", "name": account.name}


def _number_fields(number: Number) -> dict[str, str]:
    return {
        "pool": number.pool.value,
        "status": number.status.value,
        "owner": number.owner or "",
        "callback_rule": number.callback_rule.value,
        "inbound_campaign": number.inbound_campaign or "",
    }


def _campaign_fields(campaign: Campaign) -> dict[str, str]:
    return {
        "account": campaign.account,
        "kind": campaign.kind.value,
        "accept_inbound": "1" if campaign.accept_inbound else "0",
        "state": campaign.state.value,
        "caller_id": campaign.caller_id or "",
        "name": campaign.name,
    }


def _snapshot(version: int, ids: dict[str, list[str]], rows: list[dict]) -> RoutingSnapshot:
    snapshot = RoutingSnapshot(version=version)
    row_iter = iter(rows)
    for kind, keys in ids.items():
        for key in keys:
            raw = {_text(k): _text(v) for k, v in next(row_iter).items()}
            if not raw:
                continue  # deleted between the two reads; the next version will say so
            try:
                _add(snapshot, kind, key, raw)
            except (KeyError, ValueError) as exc:
                log.error("bad routing record skipped", kind=kind, key=key, error=str(exc))
    return snapshot


def _add(snapshot: RoutingSnapshot, kind: str, key: str, raw: dict[str, str]) -> None:
    if kind == "account":
        snapshot.accounts[key] = Account(key, raw.get("verified") == "1", raw.get("name", ""))
    elif kind == "number":
        snapshot.numbers[key] = Number(
            did=key,
            pool=Pool(raw["pool"]),
            status=NumberStatus(raw["status"]),
            owner=raw.get("owner") or None,
            callback_rule=CallbackRule(raw.get("callback_rule") or CallbackRule.AS_CAMPAIGN),
            inbound_campaign=raw.get("inbound_campaign") or None,
        )
    else:
        snapshot.campaigns[key] = Campaign(
            id=key,
            account=raw["account"],
            kind=CampaignKind(raw["kind"]),
            accept_inbound=raw.get("accept_inbound") == "1",
            state=CampaignState(raw.get("state") or CampaignState.RUNNING),
            caller_id=raw.get("caller_id") or None,
            name=raw.get("name", ""),
        )
