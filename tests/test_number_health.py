"""Number health in Redis (store/number_health.py) and the dialers' view of it
(outbound/number_health.py), on one server and on a Cluster: each call counts once, the window
slides, and of several dialers exactly one rests a number, and brings it back."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from zvonok_agi.outbound.number_health import PoolHealth
from zvonok_agi.routing.health import Counts, HealthRule
from zvonok_agi.routing.model import Attempt, Number, NumberStatus, Outcome, Pool
from zvonok_agi.store.history import CallbackHistory
from zvonok_agi.store.number_health import STEPS, NumberHealthStore
from zvonok_agi.store.routing_data import RoutingSnapshot

NOW = 1_800_000_000.0
DAY = 86400.0
POOL = tuple(f"749500000{i:02d}" for i in range(8))
RULE = HealthRule(fraction=0.5, min_placed=20, max_rested_share=0.25, cooldown=3600.0)


def stores(store) -> tuple[NumberHealthStore, CallbackHistory]:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    health = NumberHealthStore(store, prefix, DAY)
    return health, CallbackHistory(store, prefix, health=health)


async def dial(history: CallbackHistory, n: int, did: str, at: float = NOW) -> Attempt:
    template = Attempt(f"a{n}", "promo", "acme", "", f"7916{n:07d}", at)
    attempt, _ = await history.record_dial(template, [did], avoid_previous=False, cap=None)
    assert attempt is not None
    return attempt


async def test_each_call_counts_once_when_its_outcome_first_arrives(store) -> None:
    health, history = stores(store)
    did = POOL[0]
    answered = await dial(history, 1, did)
    busy = await dial(history, 2, did)
    await dial(history, 3, did)  # still ringing: not counted yet
    never_left = await dial(history, 4, did)  # its Originate never reached Asterisk
    assert await history.settle(never_left, Outcome.FAILED, placed=False)
    assert await history.settle(answered, Outcome.ANSWERED)
    assert await history.settle(answered, Outcome.ANSWERED)  # a retry, or the adopting dialer
    assert await history.settle(busy, Outcome.BUSY)
    assert await history.settle(busy, Outcome.FAILED)
    read = await health.read([did, POOL[1]], NOW + 60)
    assert read[did].counts == Counts(placed=2, answered=1)
    assert read[did].counts.rate == 0.5
    assert read[POOL[1]].counts == Counts(0, 0) and read[POOL[1]].rested_until is None


async def test_the_window_slides(store) -> None:
    health, _ = stores(store)
    did = POOL[0]
    step = DAY / STEPS
    await health.count(did, True, NOW)
    await health.count(did, False, NOW + DAY / 2)
    assert (await health.read([did], NOW + DAY / 2))[did].counts == Counts(2, 1)
    assert (await health.read([did], NOW + DAY - step))[did].counts == Counts(2, 1)
    assert (await health.read([did], NOW + DAY + step))[did].counts == Counts(1, 0)
    # A count a window later drops the old steps from Redis too.
    await health.count(did, False, NOW + 2 * DAY)
    raw = await store.hgetall(health.key(did))
    assert len(raw) == 1


def changes(event: str) -> float:
    """zvonok_number_health_changes_total{event} in this process."""
    sample = REGISTRY.get_sample_value("zvonok_number_health_changes_total", {"event": event})
    return sample or 0.0


def snapshot() -> RoutingSnapshot:
    pool = {did: Number(did, Pool.SERVICE, NumberStatus.ACTIVE) for did in POOL}
    return RoutingSnapshot(version=1, service_pool=pool)


async def fill(health: NumberHealthStore, did: str, placed: int, answered: int) -> None:
    for n in range(placed):
        await health.count(did, n < answered, NOW - 60)


async def test_of_two_dialers_one_rests_the_number_and_one_brings_it_back(store) -> None:
    health, _ = stores(store)
    for did in POOL[:7]:
        await fill(health, did, 20, 10)
    await fill(health, POOL[7], 20, 2)  # 10 % against a median of 50 %
    clock = [NOW]
    routing = snapshot()
    dialers = [PoolHealth(health, RULE, lambda: routing, clock=lambda: clock[0]) for _ in range(2)]
    rested_before = changes("rested")
    with capture_logs() as logs:
        for dialer in dialers:
            await dialer.refresh()
    assert [e["did"] for e in logs if e["event"] == "number rested"] == [POOL[7]]
    assert all(e["audit"] for e in logs if e["event"] == "number rested")
    assert changes("rested") - rested_before == 1
    assert all(d.rested == {POOL[7]} for d in dialers)
    [event] = [fields for _, fields in await health.events()]
    assert event["did"] == POOL[7] and event["event"] == "rested"
    assert float(event["until"]) == NOW + 3600 and float(event["rate"]) == 0.1
    assert (await health.read([POOL[7]], NOW))[POOL[7]].rested_until == NOW + 3600

    clock[0] = NOW + 3600
    back_before = changes("back")
    with capture_logs() as logs:
        for dialer in dialers:
            await dialer.refresh()
    assert [e["did"] for e in logs if e["event"] == "number back"] == [POOL[7]]
    assert changes("back") - back_before == 1
    assert all(d.rested == frozenset() for d in dialers)
    back = (await health.read([POOL[7]], clock[0]))[POOL[7]]
    assert back.counts == Counts(0, 0) and back.rested_until is None  # a fresh window
    assert [f["event"] for _, f in await health.events()] == ["rested", "back"]


async def test_with_resting_off_counts_are_kept_and_nothing_rests(store) -> None:
    health, _ = stores(store)
    for did in POOL[:7]:
        await fill(health, did, 20, 10)
    await fill(health, POOL[7], 20, 0)
    routing = snapshot()
    dialer = PoolHealth(health, RULE, lambda: routing, enabled=False, clock=lambda: NOW)
    result = await dialer.refresh()
    assert result.rest == {} and dialer.rested == frozenset()
    assert result.median == 0.5
