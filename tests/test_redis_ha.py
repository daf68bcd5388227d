"""Redis behind Sentinel: a master, a replica and three sentinels, all real redis-server
processes, one sentinel dead. The master is killed while calls arrive at 50/s: every call
still gets a route in time (from the cached routing data), callbacks are recognised again once
the replica has taken over, claims made before are kept, and the engine follows routing
changes made on the new master."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from engine_helpers import RESERVED, SERVICE, attempt, base_inventory, call, load, running_engine
from redis_topology import SERVICE as SERVICE_NAME
from redis_topology import Replicated, running
from zvonok_agi.app import redis_client

RATE = 50  # calls per second
CALLERS = [f"7916{n:07d}" for n in range(1, 501)]
UNREPLICATED = "first-callback claim not on enough replicas"


@pytest.fixture
def replicated(tmp_path):
    with running(Replicated(tmp_path)) as setup:
        yield setup


async def test_master_killed_under_50_calls_a_second(settings, replicated):
    # The sentinel the URL names first is dead all along: each discovery passes over it.
    replicated.sentinels[0].kill()
    settings = replace(
        settings,
        redis=replace(settings.redis, url=replicated.url, claim_replicas=1, refresh_interval=0.2),
    )
    inventory = base_inventory()
    # Every caller was dialed: a callback goes to the outbound campaign while the store
    # answers. One in five calls a service number, which has no inbound campaign to fall to.
    dids = [SERVICE if n % 5 == 0 else RESERVED for n in range(len(CALLERS))]
    inventory["attempts"] = [
        attempt("pool-promo" if did == SERVICE else "spring-sale", did=did, callee=caller)
        for did, caller in zip(dids, CALLERS, strict=True)
    ]
    results: list[tuple[float, str, str, dict[str, str], float]] = []
    kill_at = failed_over_at = 0.0
    unreplicated_before_kill = -1

    async def place(did: str, caller: str) -> None:
        started = time.monotonic()
        variables = await call(engine, did, caller)
        results.append((started, did, caller, variables, time.monotonic() - started))

    async def master_dies() -> None:
        nonlocal kill_at, failed_over_at, unreplicated_before_kill
        await asyncio.sleep(1.0)
        unreplicated_before_kill = sum(e["event"].startswith(UNREPLICATED) for e in logs)
        kill_at = time.monotonic()
        replicated.master.kill()
        await asyncio.to_thread(replicated.wait_for_failover)
        failed_over_at = time.monotonic()

    await load(settings, inventory)
    # Many calls asking the sentinels at once, one of them dead, leave the client knowing all.
    client = redis_client(replicated.url, settings)
    try:
        await asyncio.gather(*(client.sentinel.discover_master(SERVICE_NAME) for _ in range(50)))
        assert len(set(client.sentinel.sentinels)) == 3
    finally:
        await client.aclose()

    with capture_logs() as logs:
        async with running_engine(settings) as engine:
            failover = asyncio.create_task(master_dies())
            calls = []
            for did, caller in zip(dids, CALLERS, strict=True):
                calls.append(asyncio.create_task(place(did, caller)))
                await asyncio.sleep(1 / RATE)
                if failover.done() and time.monotonic() > failed_over_at + 2.0:
                    break
            await asyncio.gather(failover, *calls)

            # The claims won before the kill were on the replica (claim_replicas = 1): their
            # callers calling again are second callbacks, not first ones again.
            claimed = [(did, caller) for at, did, caller, v, took in results if at + took < kill_at]
            again = [await call(engine, did, caller) for did, caller in claimed[-20:]]

            # A routing change made on the new master reaches the running engine.
            await load(settings, base_inventory(rule="force_no"))
            for _ in range(100):
                if engine.cache.snapshot.numbers[RESERVED].callback_rule == "force_no":
                    break
                await asyncio.sleep(0.05)
            assert engine.cache.snapshot.numbers[RESERVED].callback_rule == "force_no"

    assert failed_over_at > kill_at > 0
    assert all(v["ZV_DECIDED"] == "1" for *_, v, _ in results)
    assert max(latency for *_, latency in results) < settings.agi.session_deadline

    before = [(did, v) for at, did, _, v, took in results if at + took < kill_at]
    during = [(did, v) for at, did, _, v, _ in results if kill_at <= at < failed_over_at]
    after = [(did, v) for at, did, _, v, _ in results if at > failed_over_at + 1.0]
    assert len(before) >= 10 and len(during) >= 10 and len(after) >= 10
    assert {v["ZV_ROUTE"] for _, v in before} == {"outbound"}
    assert {v["ZV_ROUTE"] for _, v in after} == {"outbound"}
    # Meanwhile the reserved number's bound inbound campaign came from the cache; the
    # service number, which has none, took the engine_error fallback.
    for did, v in during:
        if v["ZV_ROUTE"] == "outbound":
            continue  # its history was read before the master went
        if did == RESERVED:
            assert (v["ZV_ROUTE"], v["ZV_CAMPAIGN"]) == ("inbound", "support")
        else:
            assert (v["ZV_ROUTE"], v["ZV_FALLBACK"]) == ("fallback", "engine_error")
        assert "store unavailable" in v["ZV_REASON"]
    assert sum(v["ZV_ROUTE"] != "outbound" for _, v in during) >= len(during) // 2

    # Every claim before the kill reached the replica before its call was routed (after it,
    # with no replica left, each claim waits its claim_wait and says so).
    assert unreplicated_before_kill == 0
    assert len(again) >= 5 and "outbound" not in {v["ZV_ROUTE"] for v in again}
