"""Dialers against real parts: Redis, fake AMI peers replaying Asterisk, AMIClient, Originator.

In this process (several Dialer objects stand for several processes; each has its own links
and Redis connections) and, for the kill test, `zvonok-agi dialer` processes killed with
SIGKILL.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from dialer_helpers import (
    CAMPAIGN,
    Routing,
    callees,
    command_env,
    dialed,
    dialing_settings,
    eventually,
    inventory,
    running_dialer,
)
from engine_helpers import RESERVED, load
from fake_ami import RECORDED_OUTCOMES, FakeAMI
from zvonok_agi.ami.client import AMIClient
from zvonok_agi.app import redis_client
from zvonok_agi.outbound.queue import CampaignQueue
from zvonok_agi.routing.model import Attempt, CampaignState, Outcome
from zvonok_agi.store.history import CallbackHistory
from zvonok_agi.store.routing_data import RoutingData

CASES = ("answered", "busy", "480", "noanswer", "unknown_endpoint")


class Timed(FakeAMI):
    """Notes when each Originate arrived, and how many calls were in progress then."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.arrivals: list[float] = []
        self.ringing: list[int] = []

    def _originate(self, session: Any, action: Any) -> bool:
        self.arrivals.append(time.monotonic())
        self.ringing.append(len(self.calls_in_progress))
        return super()._originate(session, action)


async def queue_callees(settings, numbers: list[str], **limits: Any) -> CampaignQueue:
    client = redis_client(settings.redis.url, settings)
    queue = CampaignQueue(client, settings.redis.key_prefix)
    await queue.configure(CAMPAIGN, **limits)
    await queue.enqueue(CAMPAIGN, numbers)
    return queue


async def finished(queue: CampaignQueue, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not (await queue.progress(CAMPAIGN)).finished:
            await asyncio.sleep(0.02)


# ---- one dialer, two hosts --------------------------------------------------------------------


async def test_a_campaign_is_dialed_once_across_hosts_within_its_limits(settings):
    await load(settings, inventory())
    numbers = callees(30)
    cases = {number: CASES[i % len(CASES)] for i, number in enumerate(numbers)}
    async with Timed(cases=cases, time_scale=0.01) as a, Timed(cases=cases, time_scale=0.01) as b:
        settings = dialing_settings(settings, [a, b])
        queue = await queue_callees(settings, numbers, cps=40, concurrency=4)
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, (await queue.progress(CAMPAIGN)).dialing)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        async with running_dialer(settings) as dialer:
            await dialer.run(asyncio.Event(), until_done=True)
        watcher.cancel()
        progress = await queue.progress(CAMPAIGN)
        await queue.redis.aclose()

    assert dialed(a, b) == Counter(numbers)  # each once
    assert a.originate_count > 5 and b.originate_count > 5  # both hosts took calls
    assert progress.outcomes == Counter(RECORDED_OUTCOMES[c] for c in cases.values())
    assert progress.finished and progress.queued == 30 and dialer.placed == 30
    assert 1 <= peak <= 4  # within the campaign's concurrency
    starts = a.arrivals + b.arrivals
    # No faster than the campaign's rate (the spacing itself: test_dialer_queue's Pace test).
    assert max(starts) - min(starts) >= 0.9 * 29 / 40


async def test_two_dialers_keep_one_campaigns_rate_and_concurrency(settings):
    await load(settings, inventory())
    numbers = callees(24)
    async with Timed(default_case="noanswer", time_scale=0.005) as fake:
        settings = dialing_settings(settings, [fake])
        queue = await queue_callees(settings, numbers, cps=30, concurrency=3)
        async with (
            running_dialer(settings, worker="w1") as first,
            running_dialer(settings, worker="w2") as second,
        ):
            await asyncio.gather(
                first.run(asyncio.Event(), until_done=True),
                second.run(asyncio.Event(), until_done=True),
            )
        await queue.redis.aclose()
    assert dialed(fake) == Counter(numbers)
    assert first.placed > 0 and second.placed > 0 and first.placed + second.placed == 24
    assert max(fake.arrivals) - min(fake.arrivals) >= 0.9 * 23 / 30


async def test_the_trunk_limits_hold_across_campaigns(settings):
    inv = inventory()
    inv["campaigns"].append(dict(inv["campaigns"][0], id="autumn-sale"))
    await load(settings, inv)
    first, second = callees(10), callees(10, 100)
    async with Timed(default_case="noanswer", time_scale=0.01) as fake:
        settings = dialing_settings(settings, [fake], trunk_capacity=2)
        settings = replace(settings, outbound=replace(settings.outbound, trunk_calls_per_second=25))
        client = redis_client(settings.redis.url, settings)
        queue = CampaignQueue(client, settings.redis.key_prefix)
        for campaign, numbers in ((CAMPAIGN, first), ("autumn-sale", second)):
            await queue.configure(campaign, cps=200, concurrency=10)
            await queue.enqueue(campaign, numbers)
        async with running_dialer(settings) as dialer:
            await dialer.run(asyncio.Event(), until_done=True)
        await client.aclose()
    assert dialed(fake) == Counter(first + second)
    assert max(fake.ringing) <= 1  # with the one arriving, the trunk's 2 calls at once
    assert max(fake.arrivals) - min(fake.arrivals) >= 0.9 * 19 / 25  # the trunk's rate


async def test_a_host_takes_no_more_calls_at_once_than_its_capacity(settings):
    await load(settings, inventory())
    numbers = callees(20)
    async with (
        Timed(default_case="noanswer", time_scale=0.01) as a,
        Timed(default_case="noanswer", time_scale=0.01) as b,
    ):
        settings = dialing_settings(settings, [a, b])
        hosts = (f"127.0.0.1:{a.port}/1", f"127.0.0.1:{b.port}/2")
        settings = replace(settings, dialer=replace(settings.dialer, hosts=hosts))
        queue = await queue_callees(settings, numbers, cps=200, concurrency=10)
        async with running_dialer(settings) as dialer:
            await dialer.run(asyncio.Event(), until_done=True)
        await queue.redis.aclose()
    assert dialed(a, b) == Counter(numbers)
    assert max(a.ringing) == 0 and max(b.ringing) <= 1  # with the one arriving: 1 and 2
    assert a.originate_count >= 3 and b.originate_count >= 3


# ---- a host goes ------------------------------------------------------------------------------


async def test_a_host_that_goes_down_leaves_its_share_to_the_others(settings):
    await load(settings, inventory())
    numbers = callees(40)
    async with (
        FakeAMI(default_case="noanswer", time_scale=0.02) as a,
        FakeAMI(default_case="noanswer", time_scale=0.02) as b,
    ):
        settings = dialing_settings(settings, [a, b])
        settings = replace(settings, outbound=replace(settings.outbound, outcome_timeout=0.5))
        queue = await queue_callees(settings, numbers, cps=100, concurrency=6)
        async with running_dialer(settings) as dialer:
            run = asyncio.create_task(dialer.run(asyncio.Event(), until_done=True))
            await eventually(lambda: b.originate_count >= 5)
            await b.stop_listening()
            await b.crash()  # its calls end with it, their events lost
            on_b = b.originate_count
            await asyncio.wait_for(run, 20)
        progress = await queue.progress(CAMPAIGN)
        await queue.redis.aclose()
    assert b.originate_count == on_b  # nothing more for the host that went
    assert dialed(a, b) == Counter(numbers)  # each callee once, whichever host
    assert progress.finished
    # The calls in progress on b when it died are settled as failed, the rest rang out.
    assert set(progress.outcomes) <= {Outcome.NO_ANSWER, Outcome.FAILED}
    assert progress.outcomes.get(Outcome.FAILED, 0) <= 6


# ---- a dialer goes ----------------------------------------------------------------------------


async def test_a_stopped_dialer_hands_back_the_callees_it_had_not_started(settings):
    await load(settings, inventory())
    numbers = callees(30)
    async with FakeAMI(default_case="noanswer", time_scale=0.01) as fake:
        settings = dialing_settings(settings, [fake], claim_after=30.0)
        queue = await queue_callees(settings, numbers, cps=60, concurrency=3)
        stop = asyncio.Event()
        async with running_dialer(settings, worker="w1") as first:
            run = asyncio.create_task(first.run(stop))
            await eventually(lambda: fake.originate_count >= 5)
            stop.set()
            await run
        assert (await queue.progress(CAMPAIGN)).dialing == 0  # its calls ended
        group = await queue.redis.xinfo_consumers(queue.key(CAMPAIGN, "queue"), "dialers")
        assert group == []  # it left the group: nothing held, nothing left behind
        async with running_dialer(settings, worker="w2") as second:
            started = time.monotonic()
            await second.run(asyncio.Event(), until_done=True)
            assert time.monotonic() - started < 10  # handed back, not after claim_after
        await queue.redis.aclose()
    assert dialed(fake) == Counter(numbers)
    assert first.placed + second.placed == 30


class Dead:
    """What a dialer that died left behind: a callee it read, claimed, maybe recorded."""

    def __init__(self, settings, host: str) -> None:
        self.client = redis_client(settings.redis.url, settings)
        self.queue = CampaignQueue(self.client, settings.redis.key_prefix, worker="dead")
        self.history = CallbackHistory(self.client, settings.redis.key_prefix)
        self.host = host

    async def take(self, callee: str, *, recorded: bool) -> Attempt:
        await self.queue.enqueue(CAMPAIGN, [callee])
        [entry] = await self.queue.read(CAMPAIGN, 1)
        attempt = Attempt("dead0001", CAMPAIGN, "acme", "", callee, time.time())
        await self.queue.claim(
            entry,
            host=self.host,
            attempt_id=attempt.id,
            cps=100,
            concurrency=10,
            horizon=1,
            now=time.time(),
        )
        if recorded:
            recorded_attempt, _ = await self.history.record_dial(
                attempt, (RESERVED,), avoid_previous=False, cap=None, via=self.host
            )
            assert recorded_attempt is not None
            return recorded_attempt
        return attempt


@pytest.mark.parametrize("left", ["claimed", "recorded_over", "recorded_ringing"])
async def test_the_callee_of_a_dead_dialer_is_never_dialed_twice(settings, left):
    # claimed: it died before recording the attempt, so it never dialed: the callee is dialed.
    # recorded_over: it recorded the attempt (and may have sent the Originate), and Asterisk no
    # longer lists the call: settled at once as failed, not dialed again.
    # recorded_ringing: the call rings still: followed, settled by its events.
    await load(settings, inventory())
    callee = "79001234567"
    async with FakeAMI(cases={callee: "nolistener"}, time_scale=0.1) as fake:  # rings 3 s
        settings = dialing_settings(settings, [fake])
        host = f"127.0.0.1:{fake.port}"
        dead = Dead(settings, host)
        attempt = await dead.take(callee, recorded=left != "claimed")
        if left == "recorded_ringing":  # the dead dialer's Originate, on its own link
            async with AMIClient("127.0.0.1", fake.port, "lab", "labsecret") as ami:
                await ami.send_action(
                    "Originate",
                    [
                        ("Channel", f"PJSIP/{callee}@carrier"),
                        ("Context", "c"),
                        ("Exten", "s"),
                        ("Priority", "1"),
                        ("ChannelId", attempt.id),
                    ],
                )
            await eventually(lambda: fake.calls_in_progress == [attempt.id])
        async with running_dialer(settings, worker="alive") as dialer:
            await asyncio.wait_for(dialer.run(asyncio.Event(), until_done=True), 15)
        progress = await dead.queue.progress(CAMPAIGN)
        kept = await dead.history.attempts(attempt.did, callee) if attempt.did else []
        await dead.client.aclose()

    assert progress.finished and progress.dialing == 0
    if left == "claimed":
        assert dialer.placed == 1 and dialed(fake) == Counter([callee])
        assert progress.outcomes == {Outcome.NO_ANSWER: 1}
        return
    assert dialer.placed == 0
    assert fake.originate_count == (1 if left == "recorded_ringing" else 0)
    expected = Outcome.NO_ANSWER if left == "recorded_ringing" else Outcome.FAILED
    assert progress.outcomes == {expected: 1}
    assert [a.outcome for a in kept if a.id == attempt.id] == [expected]


# ---- the campaign changes ---------------------------------------------------------------------


async def test_a_paused_campaign_waits_and_a_finished_one_is_not_dialed(settings):
    await load(settings, inventory())
    numbers = callees(6)
    async with FakeAMI() as fake:
        settings = dialing_settings(settings, [fake])
        queue = await queue_callees(settings, numbers, cps=100)
        client = redis_client(settings.redis.url, settings)
        routing = Routing(await RoutingData(client, settings.redis.key_prefix).load())
        await client.aclose()
        routing.set_state(CAMPAIGN, CampaignState.PAUSED)
        stop = asyncio.Event()
        async with running_dialer(settings, routing=routing) as dialer:
            run = asyncio.create_task(dialer.run(stop))
            await asyncio.sleep(0.3)
            assert fake.originate_count == 0
            assert dialer.why_idle(CAMPAIGN) == "campaign paused"
            routing.set_state(CAMPAIGN, CampaignState.RUNNING)
            await finished(queue)
            routing.set_state(CAMPAIGN, CampaignState.FINISHED)
            await queue.enqueue(CAMPAIGN, callees(3, 50))
            await asyncio.sleep(0.3)
            stop.set()
            await run
        progress = await queue.progress(CAMPAIGN)
        await queue.redis.aclose()
    assert dialed(fake) == Counter(numbers)
    assert progress.waiting == 3  # kept for the day the campaign runs again
    assert dialer.why_idle(CAMPAIGN) == "campaign spring-sale is finished"


# ---- processes killed -------------------------------------------------------------------------


def dialer_env(settings, fakes: list[FakeAMI]) -> dict[str, str]:
    return command_env(
        settings,
        ZVONOK_DIALER_HOSTS=",".join(f"127.0.0.1:{fake.port}" for fake in fakes),
        ZVONOK_DIALER_HEARTBEAT="0.2",
        ZVONOK_DIALER_CLAIM_AFTER="1.0",
        ZVONOK_DIALER_POLL_INTERVAL="0.02",
        ZVONOK_OUTBOUND_TRUNK_CALLS_PER_SECOND="10000",
        ZVONOK_LOG_LEVEL="warning",
    )


async def test_a_killed_dialer_process_leaves_no_callee_dialed_twice_or_lost(settings, tmp_path):
    await load(settings, inventory())
    numbers = callees(200)
    async with (
        FakeAMI(default_case="noanswer", time_scale=0.02) as a,
        FakeAMI(default_case="busy", time_scale=0.02) as b,
    ):
        queue = await queue_callees(settings, numbers, cps=150, concurrency=30)
        env = dialer_env(settings, [a, b])
        logs = [(tmp_path / f"dialer{i}.log").open("wb") for i in range(2)]
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "zvonok_agi",
                "dialer",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )
            for log in logs
        ]
        try:
            await eventually(lambda: a.originate_count + b.originate_count >= 60, 60)
            workers[0].send_signal(signal.SIGKILL)
            await workers[0].wait()
            await finished(queue, 60)
        finally:
            for worker in workers[1:]:
                worker.send_signal(signal.SIGTERM)
            await asyncio.wait_for(workers[1].wait(), 30)
            for log in logs:
                log.close()
        progress = await queue.progress(CAMPAIGN)
        history = CallbackHistory(queue.redis, settings.redis.key_prefix)
        count = dialed(a, b)
        never = [n for n in numbers if n not in count]
        marks = [await history.dialed(CAMPAIGN, n) for n in never]
        await queue.redis.aclose()
    assert workers[1].returncode == 0, (tmp_path / "dialer1.log").read_text()[-2000:]
    assert set(count.values()) == {1}, [c for c, n in count.items() if n > 1]  # none twice
    assert progress.finished and progress.queued == 200
    assert sum(progress.outcomes.values()) == 200
    # A callee the killed dialer had recorded but not sent yet is not dialed again: it is
    # settled as failed, its mark there. The window is a Redis reply and a turn of its event
    # loop: a few at most (more on a loaded machine).
    assert len(never) <= 10 and all(marks)
