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
    queue = queue_of(redis, settings)
    await queue.enqueue(K, callees(30))
    entries = await queue.read(K, 30)
    claims = []
    for i, entry in enumerate(entries):
        claims.append((await claim(queue, entry, f"a{i}", cps=20, horizon=0.5), time.time()))
    slots = [at + c.delay for c, at in claims if c.wait is None]  # when each may start
    # Slots 50 ms apart, up to the 0.5 s horizon; the rest asked to come back later.
    assert len(slots) >= 11  # more if the claims themselves took long
    assert all(0.035 <= b - a <= 0.065 for a, b in zip(slots, slots[1:], strict=False))
    refused = [c.wait for c, _ in claims if c.wait is not None]
    assert refused and all(w is not None and 0 < w <= 0.6 for w in refused)


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
    key = f"{settings.redis.key_prefix}dialer:trunk:{{PJSIP/carrier}}:pace"
    dialers = [Pace(redis, key, rate=50, horizon=0.3) for _ in range(3)]

    async def take(pace: Pace) -> tuple[float, float]:
        wait = await pace.take()
        return wait, time.time()

    taken = await asyncio.gather(*(take(dialers[i % 3]) for i in range(20)))
    slots = sorted(at + wait for wait, at in taken if wait >= 0)  # when each may start
    assert len(slots) >= 16  # 0, 20, ..., 300 ms: the horizon (more if the takes were slow)
    assert all(0.01 <= b - a <= 0.03 for a, b in zip(slots, slots[1:], strict=False))
    assert len(slots) < 20  # the others were told when to come back, no slot taken
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
    prefix = settings.redis.key_prefix
    leases = Leases(checked, f"{prefix}dialer:host:{{h:1}}:calls", 1, 1.0)
    await leases.acquire("a")
    await leases.renew(["a"])
    await Pace(checked, f"{prefix}dialer:trunk:{{PJSIP/x}}:pace", 10, 1.0).take()
    assert len(checked.calls) == 10


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
