"""The campaigns' queues and the limits across dialers, on the real Redis (outbound/queue.py,
outbound/pacing.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.crc import key_slot

from dialer_helpers import callees
from zvonok_agi.config import ConfigError, dialer_hosts, load_settings
from zvonok_agi.outbound.pacing import Leases, Pace
from zvonok_agi.outbound.queue import CampaignQueue, Claim, Entry, progress_document
from zvonok_agi.routing.model import Outcome

K = "spring-sale"


def queue_of(redis, settings, worker: str = "w1") -> CampaignQueue:
    return CampaignQueue(redis, settings.redis.key_prefix, worker=worker)


async def claim(queue: CampaignQueue, entry: Entry, attempt: str, **limits: float) -> Claim:
    options = {"cps": 1000.0, "concurrency": 100, "horizon": 1.0}
    options.update(limits)
    return await queue.claim(
        entry, host="ast1:5038", attempt_id=attempt, now=time.time(), **options
    )  # type: ignore[arg-type]


async def test_enqueue_queues_each_callee_once_and_counts_what_is_not_a_number(redis, settings):
    queue = queue_of(redis, settings)
    numbers = callees(5)
    assert await queue.enqueue(K, numbers, [("12", "not a phone number")]) == 5
    assert await queue.enqueue(K, numbers[2:] + callees(2, 100), [("12", "x")]) == 2
    progress = await queue.progress(K)
    assert (progress.queued, progress.invalid, progress.waiting) == (7, 1, 7)
    assert await queue.refusals(K) == {"12": "not a phone number"}
    assert await queue.campaigns() == [K]
    entries = await queue.read(K, 10)
    assert [e.callee for e in entries] == numbers + callees(2, 100)
    assert await queue.read(K, 10) == []  # read once, by whoever asks first
    assert await queue.read("no-such-campaign", 10) == []


async def test_a_claim_holds_the_campaigns_concurrency(redis, settings):
    queue = queue_of(redis, settings)
    await queue.enqueue(K, callees(3))
    first, second, third = await queue.read(K, 3)
    assert (await claim(queue, first, "a1", concurrency=2)).wait is None
    assert (await claim(queue, second, "a2", concurrency=2)).wait is None
    assert (await claim(queue, third, "a3", concurrency=2)).wait == 0.0  # at its concurrency
    await queue.configure(K, concurrency=3)  # the campaign's own setting wins
    assert (await claim(queue, third, "a3", concurrency=2)).wait is None
    progress = await queue.progress(K)
    assert (progress.dialing, progress.waiting, progress.concurrency) == (3, 0, 3)
    calls = await queue.calls(K)
    assert calls[first.callee]["attempt"] == "a1" and calls[first.callee]["worker"] == "w1"


async def test_claims_take_slots_spaced_at_the_campaigns_rate(redis, settings):
    """Read on Redis's own record of the campaign's next free slot: one interval (1 s at
    1 call/s) further per claim, up to the 2.5 s horizon; past it, come back later."""
    queue = queue_of(redis, settings)
    await queue.enqueue(K, callees(6))
    entries = await queue.read(K, 6)
    pace = queue.key(K, "pace")
    claims, next_free = [], []
    for i, entry in enumerate(entries):
        claims.append(await claim(queue, entry, f"a{i}", cps=1, horizon=2.5))
        next_free.append(float(await redis.get(pace)))
    assert [c.wait is None for c in claims] == [True] * 3 + [False] * 3
    assert claims[0].delay < claims[1].delay < claims[2].delay <= 2.0
    moved = [b - a for a, b in zip(next_free, next_free[1:], strict=False)]
    assert moved == [1000.0, 1000.0, 0.0, 0.0, 0.0]
    assert all(c.wait is not None and 0 < c.wait <= 1.0 for c in claims[3:])


async def test_a_dead_dialers_claim_is_taken_over_without_counting_twice(redis, settings):
    queue, other = queue_of(redis, settings, "dead"), queue_of(redis, settings, "alive")
    await queue.enqueue(K, callees(1))
    [entry] = await queue.read(K, 1)
    assert (await claim(queue, entry, "a1", concurrency=1)).wait is None
    taken = await claim(other, entry, "a2", concurrency=1)  # no room is needed: it is the same
    assert taken.wait is None and taken.replaced is not None
    assert taken.replaced["attempt"] == "a1" and taken.replaced["worker"] == "dead"
    assert (await queue.progress(K)).dialing == 1


async def test_settling_counts_once_whoever_settles(redis, settings):
    queue = queue_of(redis, settings)
    await queue.enqueue(K, callees(3))
    busy, refused, released = await queue.read(K, 3)
    for i, entry in enumerate((busy, refused, released)):
        await claim(queue, entry, f"a{i}")
    assert await queue.settle(busy, Outcome.BUSY) is True
    assert await queue.settle(busy, Outcome.FAILED) is False  # a second dialer: not counted
    assert await queue.refuse(refused, "Originate refused: Permission denied") is True
    await queue.release(released, "not-its-attempt")  # another attempt's release: no effect
    assert (await queue.progress(K)).dialing == 1
    await queue.release(released, "a2")
    progress = await queue.progress(K)
    assert progress.outcomes == {Outcome.BUSY: 1}
    assert (progress.refused, progress.dialing, progress.waiting, progress.done) == (1, 0, 1, 1)
    assert await queue.refusals(K) == {refused.callee: "Originate refused: Permission denied"}
    document = progress_document(progress, await queue.calls(K))
    assert document["outcomes"]["busy"] == 1 and document["callees"] == 3
    assert document["refused"] == 1 and document["waiting"] == 1


async def test_a_silent_dialers_entries_are_taken_over(redis, settings):
    queue, other = queue_of(redis, settings, "w1"), queue_of(redis, settings, "w2")
    await queue.enqueue(K, callees(4))
    entries = await queue.read(K, 4)
    await asyncio.sleep(0.3)
    await queue.keep(K, [entries[0].id])  # w1 still works on the first
    taken = await other.take_over(K, idle=0.2)
    assert [e.id for e in taken] == [e.id for e in entries[1:]]
    assert await other.take_over(K, idle=0.2) == []  # now w2's, fresh


async def test_a_stopping_dialer_hands_entries_back(redis, settings):
    queue, other = queue_of(redis, settings, "w1"), queue_of(redis, settings, "w2")
    await queue.enqueue(K, callees(2))
    first, second = await queue.read(K, 2)
    await queue.requeue(first)
    assert [e.callee for e in await other.read(K, 5)] == [first.callee]
    assert (await queue.progress(K)).queued == 2  # not queued twice


async def test_a_finished_campaign_is_forgotten_unless_callees_came_meanwhile(redis, settings):
    queue = queue_of(redis, settings)
    await queue.enqueue(K, callees(1))
    assert await queue.forget_if_done(K) is False  # one waits
    [entry] = await queue.read(K, 1)
    await claim(queue, entry, "a1")
    await queue.settle(entry, Outcome.ANSWERED)
    assert await queue.forget_if_done(K) is True
    assert await queue.campaigns() == []
    stream = queue.key(K, "queue")
    assert await redis.xlen(stream) <= 1  # dialed entries trimmed (the newest may stay)
    await queue.enqueue(K, callees(1, 50) + callees(1))
    assert await queue.campaigns() == [K]
    [entry] = await queue.read(K, 5)  # the new one, not the one trimmed, nor the old again
    assert entry.callee == callees(1, 50)[0]


async def consumers(redis, queue: CampaignQueue) -> dict[str, int]:
    """The queue's consumers and how many entries each holds."""
    found = await redis.xinfo_consumers(queue.key(K, "queue"), "dialers")
    return {c["name"].decode(): c["pending"] for c in found}


async def test_consumers_that_hold_nothing_are_dropped_and_the_others_kept(redis, settings):
    w1, w2, w3 = (queue_of(redis, settings, w) for w in ("w1", "w2", "w3"))
    await w1.enqueue(K, callees(3))
    [held] = await w1.read(K, 1)
    [done] = await w2.read(K, 1)
    await claim(w2, done, "a2")
    await w2.settle(done, Outcome.BUSY)
    [handed_back] = await w3.read(K, 1)
    await w3.requeue(handed_back)
    assert await consumers(redis, w1) == {"w1": 1, "w2": 0, "w3": 0}

    assert await w1.drop_consumers(K) == 0  # it still holds `held`
    assert await w2.drop_consumers(K) == 1  # settled: holds nothing
    assert await consumers(redis, w1) == {"w1": 1, "w3": 0}
    assert await w1.drop_consumers(K, everyone=True) == 1  # w3
    assert await consumers(redis, w1) == {"w1": 1}
    assert [e.id for e in await w2.take_over(K, 0)] == [held.id]  # never lost
    assert await w3.drop_consumers(K) == 0  # gone already: nothing to drop


async def test_a_done_campaign_keeps_no_consumer(redis, settings):
    w1, w2 = queue_of(redis, settings, "w1"), queue_of(redis, settings, "w2")
    await w1.enqueue(K, callees(2))
    for queue in (w1, w2):
        [entry] = await queue.read(K, 1)
        await claim(queue, entry, f"a-{queue.worker}")
        await queue.settle(entry, Outcome.ANSWERED)
    assert set(await consumers(redis, w1)) == {"w1", "w2"}
    assert await w1.forget_if_done(K) is True
    assert await consumers(redis, w1) == {}


async def test_leases_hold_a_capacity_across_dialers_and_end_by_themselves(redis, settings):
    key = f"{settings.redis.key_prefix}dialer:host:{{ast1:5038}}:calls"
    one, two = Leases(redis, key, 2, ttl=0.3), Leases(redis, key, 2, ttl=0.3)
    assert await one.acquire("a") and await two.acquire("b")
    assert not await one.acquire("c")
    await two.release("b")
    assert await one.acquire("c") and await one.held() == 2
    await asyncio.sleep(0.2)
    await one.renew(["a"])  # "c" is left to end by itself
    await asyncio.sleep(0.2)
    assert await one.held() == 1
    assert await two.acquire("d") and not await two.acquire("e")


async def test_pace_spaces_starts_evenly_across_dialers(redis, settings):
    """Read on Redis's own record: each take moves the next free slot on by exactly one
    interval, whichever dialer took it, until the slots reach the horizon."""
    key = f"{settings.redis.key_prefix}dialer:trunk:{{PJSIP/carrier}}:pace"
    dialers = [Pace(redis, key, rate=1, horizon=2.5) for _ in range(3)]
    next_free, waits = [], []
    for i in range(6):
        waits.append(await dialers[i % 3].take())
        next_free.append(float(await redis.get(key)))
    assert [w >= 0 for w in waits] == [True] * 3 + [False] * 3  # slots at 0, 1 and 2 s
    assert waits[0] < waits[1] < waits[2] <= 2.0
    moved = [b - a for a, b in zip(next_free, next_free[1:], strict=False)]
    assert moved == [1000.0, 1000.0, 0.0, 0.0, 0.0]  # the others took no slot
    with pytest.raises(ValueError):
        Pace(redis, key, rate=0, horizon=1)


class SlotChecked:
    """A Redis client whose scripts check that each call's keys share one Cluster slot."""

    def __init__(self, redis) -> None:
        self._redis = redis
        self.calls: list[list[str]] = []

    def __getattr__(self, name: str):
        return getattr(self._redis, name)

    def register_script(self, text: str):
        script = self._redis.register_script(text)

        async def call(keys: list[str], args: list | None = None) -> object:
            assert len({key_slot(key.encode()) for key in keys}) == 1, keys
            self.calls.append(keys)
            return await script(keys=keys, args=args)

        return call


async def test_every_script_touches_one_cluster_slot(redis, settings):
    checked = SlotChecked(redis)
    queue = CampaignQueue(checked, settings.redis.key_prefix, worker="w1")
    await queue.enqueue(K, callees(2), [("x", "not a phone number")])
    first, second = await queue.read(K, 2)
    await claim(queue, first, "a1")
    await claim(queue, second, "a2")
    await queue.settle(first, Outcome.BUSY)
    await queue.release(second, "a2")
    await queue.requeue(second)
    await queue.progress(K)
    await queue.drop_consumers(K)
    prefix = settings.redis.key_prefix
    leases = Leases(checked, f"{prefix}dialer:host:{{h:1}}:calls", 1, 1.0)
    await leases.acquire("a")
    await leases.renew(["a"])
    await Pace(checked, f"{prefix}dialer:trunk:{{PJSIP/x}}:pace", 10, 1.0).take()
    assert len(checked.calls) == 11


def test_the_hosts_setting() -> None:
    hosts = dialer_hosts(
        load_settings(environ={"ZVONOK_DIALER_HOSTS": "10.0.0.1:5038,ast2:5039/7"})
    )
    assert [(h.name, h.host, h.port, h.capacity) for h in hosts] == [
        ("10.0.0.1:5038", "10.0.0.1", 5038, 100),
        ("ast2:5039", "ast2", 5039, 7),
    ]
    alone = dialer_hosts(load_settings(environ={"ZVONOK_AMI_HOST": "10.0.0.9"}))
    assert [h.name for h in alone] == ["10.0.0.9:5038"]  # the [ami] host when none is listed
    for bad, message in [
        ("ast1", "not host:port"),
        ("ast1:0", "not host:port"),
        ("ast1:5038/0", "capacity"),
        ("ast1:5038/x", "capacity"),
        ("ast1:5038,ast1:5038/3", "listed twice"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_settings(environ={"ZVONOK_DIALER_HOSTS": bad})
    with pytest.raises(ConfigError, match="claim_after"):
        load_settings(environ={"ZVONOK_DIALER_HEARTBEAT": "20"})
