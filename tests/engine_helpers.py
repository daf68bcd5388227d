"""Start the real engine on a test inventory; place calls the way Asterisk does."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
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
