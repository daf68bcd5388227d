"""Start the real engine on a test inventory; place calls the way Asterisk does."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from zvonok_agi.agi.client import agi_call
from zvonok_agi.app import Engine, redis_client
from zvonok_agi.config import Settings
from zvonok_agi.inventory import load_inventory, parse_inventory
from zvonok_agi.store.history import CallbackHistory
from zvonok_agi.store.routing_data import RoutingData

OWNER = "acme"
RESERVED = "74951234567"
SERVICE = "74950000001"
CALLER = "79161234567"


def base_inventory(
    *,
    rule: str = "as_campaign",
    accept_inbound: bool = True,
    state: str = "running",
    inbound_bound: bool = True,
    status: str = "active",
    owner: str = OWNER,
) -> dict[str, Any]:
    """acme owns RESERVED (bound to inbound "support") and dials from it with "spring-sale";
    "oldco" owned the number before; SERVICE is in the shared pool."""
    reserved: dict[str, Any] = {
        "did": RESERVED,
        "pool": "reservable",
        "owner": owner,
        "status": status,
        "callback_rule": rule,
    }
    if inbound_bound:
        reserved["inbound_campaign"] = "support" if owner == OWNER else "oldco-line"
    return {
        "accounts": [
            {"id": OWNER, "verified": True},
            {"id": "oldco", "verified": True},
            {"id": "newbie", "verified": False},
        ],
        "campaigns": [
            {"id": "spring-sale", "account": OWNER, "kind": "outbound",
             "accept_inbound": accept_inbound, "state": state},
            {"id": "support", "account": OWNER, "kind": "inbound"},
            {"id": "oldco-sale", "account": "oldco", "kind": "outbound", "accept_inbound": True},
            {"id": "oldco-line", "account": "oldco", "kind": "inbound"},
            {"id": "pool-promo", "account": "newbie", "kind": "outbound",
             "accept_inbound": accept_inbound},
        ],
        "numbers": [reserved, {"did": SERVICE, "pool": "service", "status": status}],
        "attempts": [],
    }


def attempt(campaign: str, did: str = RESERVED, callee: str = CALLER, ago: str = "1h",
            outcome: str = "no_answer", callbacks: int = 0) -> dict[str, Any]:
    return {"campaign": campaign, "did": did, "callee": callee, "ago": ago,
            "outcome": outcome, "callbacks": callbacks}


async def load(settings: Settings, inventory: dict[str, Any], now: float | None = None) -> None:
    now = time.time() if now is None else now
    client = redis_client(settings.redis.url, settings)
    try:
        prefix = settings.redis.key_prefix
        await load_inventory(
            parse_inventory(inventory, now),
            RoutingData(client, prefix),
            CallbackHistory(client, prefix, settings.routing.callback_window),
            now,
        )
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def running_engine(
    settings: Settings, inventory: dict[str, Any] | None = None
) -> AsyncIterator[Engine]:
    if inventory is not None:
        await load(settings, inventory)
    async with Engine(settings) as engine:
        yield engine


async def call(engine: Engine, did: str, caller: str, timeout: float = 5.0) -> dict[str, str]:
    assert engine.server is not None
    return await agi_call("127.0.0.1", engine.server.port, did, caller, timeout=timeout)


def dialed_callers(callers: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The base inventory with every caller dialed (a callback goes outbound while its history
    can be read), and the number each calls back: one in five a service number, which has no
    inbound campaign to fall to."""
    inventory = base_inventory()
    dids = [SERVICE if n % 5 == 0 else RESERVED for n in range(len(callers))]
    inventory["attempts"] = [
        attempt("pool-promo" if did == SERVICE else "spring-sale", did=did, callee=caller)
        for did, caller in zip(dids, callers, strict=True)
    ]
    return inventory, dids


@dataclass
class Failover:
    """Calls placed while a Redis master was killed and replaced: (sent, answered, did,
    caller, variables) each, and when the master was killed and when it was replaced."""

    results: list[tuple[float, float, str, str, dict[str, str]]] = field(default_factory=list)
    killed_at: float = 0.0
    replaced_at: float = 0.0

    def answered_before(self) -> list[tuple[str, str, dict[str, str]]]:
        return [(did, c, v) for _, answered, did, c, v in self.results if answered < self.killed_at]

    def sent_during(self) -> list[tuple[str, dict[str, str]]]:
        return [
            (did, v)
            for sent, _, did, _, v in self.results
            if self.killed_at <= sent < self.replaced_at
        ]

    def sent_after(self, settled: float) -> list[tuple[str, dict[str, str]]]:
        return [
            (did, v) for sent, _, did, _, v in self.results if sent > self.replaced_at + settled
        ]


FAILOVER_RATE = 50  # calls per second while a Redis master is killed
FAILOVER_CALLERS = [f"7916{n:07d}" for n in range(1, 501)]


async def calls_through_a_failover(
    engine: Engine,
    dids: list[str],
    callers: list[str],
    rate: float,
    kill: Callable[[], None],
    replaced: Callable[[], None],
) -> Failover:
    """Calls at `rate` a second; after one second `kill()` (the master), then `replaced()`
    (blocking, in a thread) until another took over; calls go on two seconds more."""
    failover = Failover()

    async def place(did: str, caller: str) -> None:
        sent = time.monotonic()
        variables = await call(engine, did, caller)
        failover.results.append((sent, time.monotonic(), did, caller, variables))

    async def master_dies() -> None:
        await asyncio.sleep(1.0)
        failover.killed_at = time.monotonic()
        kill()
        await asyncio.to_thread(replaced)
        failover.replaced_at = time.monotonic()

    dying = asyncio.create_task(master_dies())
    calls = []
    for did, caller in zip(dids, callers, strict=True):
        calls.append(asyncio.create_task(place(did, caller)))
        await asyncio.sleep(1 / rate)
        if dying.done() and time.monotonic() > failover.replaced_at + 2.0:
            break
    await asyncio.gather(dying, *calls)
    assert len(failover.results) == len(calls)
    return failover


async def follows_a_routing_change(settings: Settings, engine: Engine) -> None:
    """A routing change written now (to whichever master there is) reaches the running
    engine."""
    await load(settings, base_inventory(rule="force_no"))
    for _ in range(100):
        if engine.cache.snapshot.numbers[RESERVED].callback_rule == "force_no":
            return
        await asyncio.sleep(0.05)
    assert engine.cache.snapshot.numbers[RESERVED].callback_rule == "force_no"


def routed_without_the_store(calls: list[tuple[str, dict[str, str]]]) -> int:
    """Checks that each call not routed outbound was routed without the store: the reserved
    number to its bound inbound campaign (from the engine's copy), the service number, which
    has none, to the engine_error fallback; how many there were."""
    held_up = [(did, v) for did, v in calls if v["ZV_ROUTE"] != "outbound"]
    for did, v in held_up:
        if did == RESERVED:
            assert (v["ZV_ROUTE"], v["ZV_CAMPAIGN"]) == ("inbound", "support")
        else:
            assert (v["ZV_ROUTE"], v["ZV_FALLBACK"]) == ("fallback", "engine_error")
        assert "store unavailable" in v["ZV_REASON"]
    return len(held_up)
