"""Redis behind Sentinel: a master, a replica and three sentinels, all real redis-server
processes, one sentinel dead. The master is killed while calls arrive at 50/s: every call
still gets a route in time (from the cached routing data), callbacks are recognised again once
the replica has taken over, claims made before are kept, and the engine follows routing
changes made on the new master."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from engine_helpers import (
    FAILOVER_CALLERS,
    FAILOVER_RATE,
    call,
    calls_through_a_failover,
    dialed_callers,
    follows_a_routing_change,
    load,
    routed_without_the_store,
    running_engine,
)
from redis_topology import SERVICE as SERVICE_NAME
from redis_topology import Replicated, running
from zvonok_agi.app import redis_client

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
    # Every caller was dialed: a callback goes to the outbound campaign while the store
    # answers.
    inventory, dids = dialed_callers(FAILOVER_CALLERS)
    unreplicated_before_kill = -1

    def master_dies() -> None:
        nonlocal unreplicated_before_kill
        unreplicated_before_kill = sum(e["event"].startswith(UNREPLICATED) for e in logs)
        replicated.master.kill()

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
            failover = await calls_through_a_failover(
                engine,
                dids,
                FAILOVER_CALLERS,
                FAILOVER_RATE,
                master_dies,
                replicated.wait_for_failover,
            )
            # The claims won before the kill were on the replica (claim_replicas = 1): their
            # callers calling again are second callbacks, not first ones again.
            claimed = failover.answered_before()[-20:]
            again = [await call(engine, did, caller) for did, caller, _ in claimed]
            await follows_a_routing_change(settings, engine)  # made on the new master

    results = failover.results
    assert failover.replaced_at > failover.killed_at > 0
    assert all(v["ZV_DECIDED"] == "1" for *_, v in results)
    assert max(answered - sent for sent, answered, *_ in results) < settings.agi.session_deadline

    before = failover.answered_before()
    during = failover.sent_during()
    after = failover.sent_after(1.0)
    assert len(before) >= 10 and len(during) >= 10 and len(after) >= 10
    assert {v["ZV_ROUTE"] for *_, v in before} == {"outbound"}
    assert {v["ZV_ROUTE"] for _, v in after} == {"outbound"}
    # Meanwhile calls were routed without the store, but for those whose history was read
    # before the master went.
    assert routed_without_the_store(during) >= len(during) // 2

    # Every claim before the kill reached the replica before its call was routed (after it,
    # with no replica left, each claim waits its claim_wait and says so).
    assert unreplicated_before_kill == 0
    assert len(again) >= 5 and "outbound" not in {v["ZV_ROUTE"] for v in again}
