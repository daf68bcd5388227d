"""Redis Cluster's own failover: three masters with a replica each, all real redis-server
processes. The master that holds the routing data (and the history of about a third of the
callers) is killed while calls arrive at 50/s: every call still gets a route (the routing data
from the engine's copy; a caller whose history is out of reach meanwhile falls to the inbound
campaign or the fallback), normal routing returns once the replica has taken over, claims
made before are kept (claim_replicas = 1), and the engine follows routing changes made on the
new master."""

from __future__ import annotations

from dataclasses import replace

import pytest

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
from redis_topology import Cluster, running


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
    inventory, dids = dialed_callers(FAILOVER_CALLERS)
    await load(settings, inventory)
    victim = cluster.master_of(f"{settings.redis.key_prefix}{{routing}}:version")

    async with running_engine(settings) as engine:
        failover = await calls_through_a_failover(
            engine,
            dids,
            FAILOVER_CALLERS,
            FAILOVER_RATE,
            victim.kill,
            lambda: cluster.wait_for_failover(victim),
        )
        # The claims won before the kill reached the replica (claim_replicas = 1): their
        # callers calling again are second callbacks, not first ones again.
        claimed = failover.answered_before()[-20:]
        again = [await call(engine, did, caller) for did, caller, _ in claimed]
        await follows_a_routing_change(settings, engine)  # made on the new master

    assert all(v["ZV_DECIDED"] == "1" for *_, v in failover.results)  # every call got a route
    before = failover.answered_before()
    during = failover.sent_during()
    after = failover.sent_after(1.0)
    assert len(before) >= 10 and len(during) >= 10 and len(after) >= 10
    assert {v["ZV_ROUTE"] for *_, v in before} == {"outbound"}
    assert {v["ZV_ROUTE"] for _, v in after} == {"outbound"}
    # Meanwhile the callers whose history was on the dead master were routed without it, the
    # others as before.
    assert routed_without_the_store(during) > 0

    assert len(again) >= 5 and "outbound" not in {v["ZV_ROUTE"] for v in again}
