"""Redis Cluster's own failover: three masters with a replica each, all real redis-server
processes. The master that holds the routing data (and the history of about a third of the
callers) is killed while calls arrive at 50/s: every call still gets a route (the routing data
from the engine's copy; a caller whose history is out of reach meanwhile falls to the inbound
campaign or the fallback), normal routing returns once the replica has taken over, claims
made before are kept (claim_replicas = 1), and the engine follows routing changes made on the
new master."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from engine_helpers import RESERVED, SERVICE, attempt, base_inventory, call, load, running_engine
from redis_topology import Cluster, running

RATE = 50  # calls per second
CALLERS = [f"7916{n:07d}" for n in range(1, 501)]


@pytest.fixture
def replicated_cluster(tmp_path):
    with running(Cluster(tmp_path, replicas=1)) as cluster:
        yield cluster


async def test_a_master_killed_under_50_calls_a_second(settings, replicated_cluster):
    cluster = replicated_cluster
    settings = replace(
        settings,
        redis=replace(settings.redis, url=cluster.url, claim_replicas=1, refresh_interval=0.2),
    )
    inventory = base_inventory()
    # Every caller was dialed: a callback goes to the outbound campaign while its history can
    # be read. One in five calls a service number, which has no inbound campaign to fall to.
    dids = [SERVICE if n % 5 == 0 else RESERVED for n in range(len(CALLERS))]
    inventory["attempts"] = [
        attempt("pool-promo" if did == SERVICE else "spring-sale", did=did, callee=caller)
        for did, caller in zip(dids, CALLERS, strict=True)
    ]
    await load(settings, inventory)
    victim = cluster.master_of(f"{settings.redis.key_prefix}{{routing}}:version")
    results: list[tuple[float, float, str, str, dict[str, str]]] = []  # sent, answered, ...
    kill_at = failed_over_at = 0.0

    async def place(did: str, caller: str) -> None:
        sent = time.monotonic()
        variables = await call(engine, did, caller)
        results.append((sent, time.monotonic(), did, caller, variables))

    async def master_dies() -> None:
        nonlocal kill_at, failed_over_at
        await asyncio.sleep(1.0)
        kill_at = time.monotonic()
        victim.kill()
        await asyncio.to_thread(cluster.wait_for_failover, victim)
        failed_over_at = time.monotonic()

    async with running_engine(settings) as engine:
        failover = asyncio.create_task(master_dies())
        calls = []
        for did, caller in zip(dids, CALLERS, strict=True):
            calls.append(asyncio.create_task(place(did, caller)))
            await asyncio.sleep(1 / RATE)
            if failover.done() and time.monotonic() > failed_over_at + 2.0:
                break
        await asyncio.gather(failover, *calls)

        # The claims won before the kill reached the replica (claim_replicas = 1): their
        # callers calling again are second callbacks, not first ones again.
        claimed = [(did, caller) for _, answered, did, caller, _ in results if answered < kill_at]
        again = [await call(engine, did, caller) for did, caller in claimed[-20:]]

        # A routing change made on the new master reaches the running engine.
        await load(settings, base_inventory(rule="force_no"))
        for _ in range(100):
            if engine.cache.snapshot.numbers[RESERVED].callback_rule == "force_no":
                break
            await asyncio.sleep(0.05)
        assert engine.cache.snapshot.numbers[RESERVED].callback_rule == "force_no"

    assert failed_over_at > kill_at > 0
    assert len(results) == len(calls)
    assert all(v["ZV_DECIDED"] == "1" for *_, v in results)  # every call got a route

    before = [(did, v) for _, answered, did, _, v in results if answered < kill_at]
    during = [(did, v) for sent, _, did, _, v in results if kill_at <= sent < failed_over_at]
    after = [(did, v) for sent, _, did, _, v in results if sent > failed_over_at + 1.0]
    assert len(before) >= 10 and len(during) >= 10 and len(after) >= 10
    assert {v["ZV_ROUTE"] for _, v in before} == {"outbound"}
    assert {v["ZV_ROUTE"] for _, v in after} == {"outbound"}
    # Meanwhile the callers whose history was on the dead master were routed without it: the
    # reserved number to its bound inbound campaign (from the engine's copy), the service
    # number, which has none, to the engine_error fallback. The others went on as before.
    held_up = [(did, v) for did, v in during if v["ZV_ROUTE"] != "outbound"]
    assert held_up
    for did, v in held_up:
        if did == RESERVED:
            assert (v["ZV_ROUTE"], v["ZV_CAMPAIGN"]) == ("inbound", "support")
        else:
            assert (v["ZV_ROUTE"], v["ZV_FALLBACK"]) == ("fallback", "engine_error")
        assert "store unavailable" in v["ZV_REASON"]

    assert len(again) >= 5 and "outbound" not in {v["ZV_ROUTE"] for v in again}
