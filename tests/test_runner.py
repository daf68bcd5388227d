"""The campaign runner against real parts: Redis, the fake AMI peer, AMIClient, Originator."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from conftest import background_errors, free_port
from engine_helpers import RESERVED, base_inventory, load
from fake_ami import RECORDED_OUTCOMES, FakeAMI
from loop_watch import PATIENCE, LoopWatch
from zvonok_agi.ami.client import AMIClient
from zvonok_agi.app import redis_client
from zvonok_agi.config import Settings
from zvonok_agi.outbound import runner as runner_module
from zvonok_agi.outbound.originator import DialRefused, Originator
from zvonok_agi.outbound.runner import (
    CampaignRunner,
    Journal,
    RateLimiter,
    RunProgress,
    RunSummary,
    TerminalProgress,
    format_summary,
    journal_path,
    read_callees,
    trunk_limiter,
    trunk_of,
)
from zvonok_agi.routing.model import CampaignState, Outcome
from zvonok_agi.store.embedded import EmbeddedRedis
from zvonok_agi.store.history import CallbackHistory
from zvonok_agi.store.routing_data import RoutingData

CASES = list(RECORDED_OUTCOMES)


def callees(n: int, start: int = 0) -> list[str]:
    return [f"7900100{i:04d}" for i in range(start, start + n)]


def inventory(**options: object) -> dict:
    """base_inventory with spring-sale dialing from acme's reserved number (no per-minute cap)."""
    inv = base_inventory(**options)  # type: ignore[arg-type]
    inv["campaigns"][0]["caller_id"] = RESERVED
    return inv


def dialed(fake: FakeAMI) -> Counter[str]:
    """How many Originates the fake received for each callee."""
    return Counter(
        (action.get("Channel") or "").partition("/")[2].partition("@")[0]
        for action in fake.originates
    )


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def originator_for(
    settings: Settings, fake: FakeAMI, **ami_options: object
) -> AsyncIterator[Originator]:
    """A real Originator on the settings' Redis and a real AMIClient to `fake`."""
    prefix = settings.redis.key_prefix
    client = redis_client(settings.redis.url, settings)
    history = CallbackHistory(client, prefix, settings.routing.callback_window)
    snapshot = await RoutingData(client, prefix).load()
    options: dict[str, object] = {
        "ping_interval": None,
        "action_timeout": 2.0,
        "connect_timeout": 2.0,
        "reconnect_base": 0.02,
        "reconnect_cap": 0.1,
    }
    options.update(ami_options)
    try:
        ami = AMIClient("127.0.0.1", fake.port, "lab", "labsecret", **options)  # type: ignore[arg-type]
        async with ami, Originator(ami, history, lambda: snapshot, settings.outbound) as orig:
            yield orig
    finally:
        await client.aclose()


class Watch:
    """Wraps `originator.place`: when each call started, how many ran at once, and that the
    callee was journaled before its Originate."""

    def __init__(self, originator: Originator, journal: Journal) -> None:
        self.starts: list[float] = []
        self.in_flight = self.peak = 0
        self.unjournaled: list[str] = []
        place = originator.place

        async def watched(attempt, caller_id):  # type: ignore[no-untyped-def]
            self.starts.append(time.monotonic())
            if attempt.callee not in journal.done():
                self.unjournaled.append(attempt.callee)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                return await place(attempt, caller_id)
            finally:
                self.in_flight -= 1

        originator.place = watched  # type: ignore[method-assign]


def make_runner(
    originator: Originator,
    numbers: list[str],
    journal: Journal,
    *,
    cps: float = 100.0,
    concurrency: int = 4,
    trunk: RateLimiter | None = None,
    progress: Callable[[RunProgress], None] | None = None,
    campaign: str = "spring-sale",
) -> CampaignRunner:
    return CampaignRunner(
        originator,
        campaign,
        numbers,
        journal,
        calls_per_second=cps,
        concurrency=concurrency,
        trunk=trunk or RateLimiter(10_000),
        progress=progress,
    )


# ---- a whole run ------------------------------------------------------------------------------


async def test_run_settles_every_case_within_concurrency_and_rate(settings, tmp_path):
    await load(settings, inventory())
    numbers = callees(30)
    cases = {number: CASES[i % len(CASES)] for i, number in enumerate(numbers)}
    # A duplicate written differently and a value that is no phone number.
    listed = [*numbers, "+7 (900) 100-00-01", "not-a-number"]
    journal = Journal(tmp_path / "runs" / "spring.journal")
    snapshots: list[RunProgress] = []
    cps, concurrency = 40.0, 4

    async with FakeAMI(cases=cases, time_scale=0.01) as fake:
        async with originator_for(settings, fake) as originator:
            watch = Watch(originator, journal)
            runner = make_runner(
                originator,
                listed,
                journal,
                cps=cps,
                concurrency=concurrency,
                progress=snapshots.append,
            )
            summary = await runner.run(asyncio.Event())

    assert summary.outcomes == Counter(RECORDED_OUTCOMES[case] for case in cases.values())
    assert (summary.total, summary.placed, summary.skipped) == (31, 30, 0)
    assert summary.refused == 1 and "not-a-number" in summary.refusals[0]
    assert not summary.interrupted and summary.remaining == 0
    assert dialed(fake) == Counter(numbers)  # each once: the duplicate was not dialed
    assert journal.done() == set(numbers)
    assert watch.unjournaled == []
    # At most `concurrency` at once, and the limit was actually reached.
    assert watch.peak == concurrency
    assert max(s.in_flight for s in snapshots) <= concurrency
    # Starts evenly spaced at 1/cps (a little slack for the loop's jitter).
    gaps = [b - a for a, b in zip(watch.starts, watch.starts[1:], strict=False)]
    assert min(gaps) > 0.6 / cps
    assert watch.starts[-1] - watch.starts[0] >= 0.95 * (len(numbers) - 1) / cps
    assert snapshots[-1].done == snapshots[-1].total == 31
    assert snapshots[-1].in_flight == 0


async def test_runners_share_the_trunk_limit(settings, tmp_path):
    await load(settings, inventory())
    trunk = RateLimiter(25)  # each campaign may go at 200/s, the trunk only at 25/s
    first, second = callees(10), callees(10, start=100)
    async with FakeAMI() as fake:
        async with originator_for(settings, fake) as originator:
            watch = Watch(originator, Journal(tmp_path / "unused"))
            runs = [
                make_runner(
                    originator, numbers, Journal(tmp_path / f"{i}.journal"), cps=200, trunk=trunk
                ).run(asyncio.Event())
                for i, numbers in enumerate((first, second))
            ]
            summaries = await asyncio.gather(*runs)
    assert [s.placed for s in summaries] == [10, 10]
    assert dialed(fake) == Counter(first + second)
    starts = sorted(watch.starts)
    assert starts[-1] - starts[0] >= 0.95 * 19 / 25
    assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) > 0.6 / 25


# ---- resuming ---------------------------------------------------------------------------------


async def test_interrupted_run_resumes_without_dialing_anyone_twice(settings, tmp_path):
    await load(settings, inventory())
    numbers = callees(20)
    journal = Journal(journal_path(tmp_path / "runs", "spring-sale", "lists/may.csv"))
    # As if an earlier run crashed between the journal write and its Originate.
    journal.append(numbers[0])
    stop = asyncio.Event()

    def stop_after_eight(progress: RunProgress) -> None:
        if progress.placed >= 8:
            stop.set()

    async with FakeAMI(time_scale=0.01) as fake:
        async with originator_for(settings, fake) as originator:
            first = await make_runner(
                originator, numbers, journal, cps=50, concurrency=3, progress=stop_after_eight
            ).run(stop)
            assert first.interrupted and first.remaining > 0
            assert first.skipped == 1
            assert first.placed + first.remaining == 19
            assert fake.originate_count == first.placed  # calls in flight ended normally
            second = await make_runner(originator, numbers, journal, cps=50).run(asyncio.Event())

    assert second.skipped == 1 + first.placed
    assert second.placed == first.remaining and not second.interrupted
    assert dialed(fake) == Counter(numbers[1:])  # each exactly once, the journaled one never
    assert journal.done() == set(numbers)


async def test_a_stop_before_the_start_dials_nobody(settings, tmp_path):
    await load(settings, inventory())
    stop = asyncio.Event()
    stop.set()
    async with FakeAMI() as fake:
        async with originator_for(settings, fake) as originator:
            summary = await make_runner(originator, callees(5), Journal(tmp_path / "j")).run(stop)
    assert fake.originates == []
    assert summary.interrupted and summary.remaining == 5 and summary.placed == 0


async def test_cancelling_the_run_cancels_the_calls_in_flight(settings, tmp_path):
    await load(settings, inventory())
    async with FakeAMI(default_case="nolistener", time_scale=1.0) as fake:  # 30 s calls
        async with originator_for(settings, fake) as originator:
            runner = make_runner(originator, callees(5), Journal(tmp_path / "j"), concurrency=2)
            run = asyncio.create_task(runner.run(asyncio.Event()))
            await eventually(lambda: fake.originate_count == 2)
            run.cancel()
            async with asyncio.timeout(2):
                await asyncio.wait([run])
    assert run.cancelled()
    assert fake.originate_count == 2


# ---- refusals ---------------------------------------------------------------------------------


def _unverified_on_reserved() -> dict:
    inv = base_inventory()
    inv["campaigns"][4]["caller_id"] = RESERVED  # pool-promo, account newbie (not verified)
    return inv


def _other_accounts_number() -> dict:
    inv = base_inventory()
    inv["campaigns"][2]["caller_id"] = RESERVED  # oldco-sale on acme's number
    return inv


@pytest.mark.parametrize(
    ("make_inventory", "campaign", "reason"),
    [
        (_unverified_on_reserved, "pool-promo", "not verified"),
        (_other_accounts_number, "oldco-sale", "not reserved by account oldco"),
        (lambda: inventory(status="disabled"), "spring-sale", "disabled"),
        (inventory, "no-such-campaign", "no campaign"),
    ],
)
async def test_a_refused_campaign_places_no_call(
    settings, tmp_path, make_inventory, campaign, reason
):
    await load(settings, make_inventory())
    journal = Journal(tmp_path / "j")
    async with FakeAMI() as fake:
        async with originator_for(settings, fake) as originator:
            runner = make_runner(originator, callees(3), journal, campaign=campaign)
            with pytest.raises(DialRefused, match=reason):
                await runner.run(asyncio.Event())
    assert fake.originates == []
    assert not journal.path.exists()


async def test_pool_at_capacity_waits_for_the_next_minute(settings, tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "POOL_RETRY", 0.02)
    settings = replace(settings, outbound=replace(settings.outbound, pool_calls_per_minute=2))
    await load(settings, base_inventory())  # pool-promo: one service number
    now = [1_900_000_000.0]
    async with FakeAMI() as fake:
        async with originator_for(settings, fake) as originator:
            originator.clock = lambda: now[0]
            runner = make_runner(
                originator, callees(4), Journal(tmp_path / "j"), campaign="pool-promo"
            )
            run = asyncio.create_task(runner.run(asyncio.Event()))
            await eventually(lambda: runner._pool_full)
            await asyncio.sleep(0.1)
            assert fake.originate_count == 2  # the cap holds: nobody dialed over it
            now[0] += 60  # the next minute
            summary = await run
    assert summary.placed == 4 and summary.refused == 0
    assert dialed(fake) == Counter(callees(4))


# ---- outages ----------------------------------------------------------------------------------


async def test_redis_down_pauses_the_run_and_it_resumes_when_back(settings, tmp_path):
    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server.start()
    settings = replace(settings, redis=replace(settings.redis, url=server.url))
    numbers = callees(24)
    paused: list[str | None] = []

    def on_progress(progress: RunProgress) -> None:
        if not paused or paused[-1] != progress.paused:
            paused.append(progress.paused)

    async def outage() -> tuple[int, int]:
        await eventually(lambda: runner.summary.placed >= 8)
        await asyncio.to_thread(server.stop)
        await eventually(lambda: paused[-1] == "store unavailable")
        await asyncio.sleep(0.2)  # an Originate already on its way may still land
        before = fake.originate_count
        await asyncio.sleep(1.2)
        during = fake.originate_count
        await asyncio.to_thread(server.start)
        return before, during

    try:
        await load(settings, inventory())
        with capture_logs() as logs:
            async with FakeAMI() as fake:
                async with originator_for(settings, fake) as originator:
                    runner = make_runner(
                        originator,
                        numbers,
                        Journal(tmp_path / "j"),
                        cps=20,
                        concurrency=3,
                        progress=on_progress,
                    )
                    summary, (before, during) = await asyncio.gather(
                        runner.run(asyncio.Event()), outage()
                    )
        # Every Originate sent has its attempt in the history: a callback is recognised.
        client = redis_client(server.url, settings)
        try:
            history = CallbackHistory(client, settings.redis.key_prefix)
            recorded = []
            for action in fake.originates:
                did = action["CallerID"].strip("<>")
                callee = action["Channel"].partition("/")[2].partition("@")[0]
                kept = await history.attempts(did, callee)
                recorded.append(action["ChannelId"] in {a.id for a in kept})
        finally:
            await client.aclose()
    finally:
        server.stop()

    assert during == before < len(numbers)  # nothing dialed while the store was down
    assert paused == [None, "store unavailable", None]
    assert summary.paused_seconds >= 1.2
    assert summary.placed == len(numbers) and not summary.interrupted
    assert dialed(fake) == Counter(numbers)
    assert all(recorded)
    events = [entry["event"] for entry in logs]
    assert events.count("store unavailable: run paused") == 1
    assert events.count("store back: run resumed") == 1


@pytest.mark.parametrize("how", ["drop", "after_queued"])
async def test_a_dropped_ami_link_dials_nobody_twice_and_the_run_goes_on(settings, tmp_path, how):
    settings = replace(settings, outbound=replace(settings.outbound, outcome_timeout=0.4))
    await load(settings, inventory())
    numbers = callees(16)

    async def cut_the_link() -> None:
        await eventually(lambda: fake.originate_count >= 6)
        if how == "drop":
            fake.drop()
        else:  # the next Originate gets "successfully queued", then the link goes
            fake.drop_after_originate_queued = True
            await eventually(lambda: fake.connections >= 2)
            fake.drop_after_originate_queued = False

    async with FakeAMI(default_case="noanswer", time_scale=0.01) as fake:
        async with originator_for(settings, fake) as originator:
            runner = make_runner(originator, numbers, Journal(tmp_path / "j"), cps=50)
            summary, _ = await asyncio.gather(runner.run(asyncio.Event()), cut_the_link())

    assert fake.connections >= 2  # the client reconnected
    assert dialed(fake) == Counter(numbers)  # every callee once: none twice, none lost
    assert summary.placed == len(numbers) and not summary.interrupted
    # The calls whose events were lost with the link settled as failed after the timeout.
    assert summary.outcomes[Outcome.FAILED] >= 1
    assert summary.outcomes[Outcome.NO_ANSWER] >= len(numbers) - 4 - 1
    assert set(summary.outcomes) <= {Outcome.FAILED, Outcome.NO_ANSWER}


async def test_the_run_pauses_while_asterisk_is_unreachable(settings, tmp_path):
    # A call in flight when the link drops never hears its outcome (the fake does not replay
    # it on the new link): it settles after outcome_timeout, kept short here.
    settings = replace(settings, outbound=replace(settings.outbound, outcome_timeout=1.0))
    await load(settings, inventory())
    numbers = callees(12)
    paused: list[str | None] = []

    def on_progress(progress: RunProgress) -> None:
        if not paused or paused[-1] != progress.paused:
            paused.append(progress.paused)

    async def outage() -> tuple[int, int]:
        await eventually(lambda: fake.originate_count >= 4)
        await fake.stop_listening()
        fake.drop()
        await eventually(lambda: paused[-1] == "AMI link down")
        before = fake.originate_count
        await asyncio.sleep(0.4)
        during = fake.originate_count
        await fake.start_listening()
        return before, during

    async with FakeAMI() as fake:
        async with originator_for(settings, fake) as originator:
            runner = make_runner(
                originator, numbers, Journal(tmp_path / "j"), cps=50, progress=on_progress
            )
            summary, (before, during) = await asyncio.gather(runner.run(asyncio.Event()), outage())

    assert during == before < len(numbers)
    assert paused == [None, "AMI link down", None]
    assert summary.paused_seconds >= 0.4
    assert summary.placed == len(numbers)
    assert dialed(fake) == Counter(numbers)


async def test_a_call_whose_originate_never_left_is_dialed_later(settings, tmp_path):
    await load(settings, inventory())
    numbers = callees(6)
    async with FakeAMI() as fake:
        async with originator_for(settings, fake) as originator:
            place, cut = originator.place, []

            async def place_after_a_cut(attempt, caller_id):  # type: ignore[no-untyped-def]
                if attempt.callee == numbers[2] and not cut:
                    cut.append(attempt.id)  # the link falls between prepare and send
                    fake.drop()
                    await eventually(lambda: not originator.ami.connected)
                return await place(attempt, caller_id)

            originator.place = place_after_a_cut  # type: ignore[method-assign]
            journal = Journal(tmp_path / "j")
            summary = await make_runner(originator, numbers, journal).run(asyncio.Event())

    assert cut
    assert dialed(fake) == Counter(numbers)  # the cut one too, once
    assert summary.placed == len(numbers)
    assert summary.outcomes == Counter({Outcome.ANSWERED: len(numbers)})


async def test_a_callee_requeued_after_a_cut_is_dialed_by_the_resumed_run(settings, tmp_path):
    # The link falls between prepare and send, and stays down; the run is stopped before the
    # redial. The callee was never dialed, so the next run over the same journal dials it.
    await load(settings, inventory())
    numbers = callees(4)
    journal = Journal(tmp_path / "j")
    stop = asyncio.Event()

    def stop_when_link_down(progress: RunProgress) -> None:
        if progress.paused == "AMI link down":
            stop.set()

    async with FakeAMI() as fake:
        async with originator_for(settings, fake) as originator:
            place = originator.place

            async def place_after_a_cut(attempt, caller_id):  # type: ignore[no-untyped-def]
                if attempt.callee == numbers[1]:
                    await fake.stop_listening()
                    fake.drop()
                    await eventually(lambda: not originator.ami.connected)
                return await place(attempt, caller_id)

            originator.place = place_after_a_cut  # type: ignore[method-assign]
            first = await make_runner(
                originator, numbers, journal, concurrency=1, progress=stop_when_link_down
            ).run(stop)
            assert dialed(fake) == Counter(numbers[:1])
            assert first.interrupted and first.remaining == 3
            assert journal.done() == set(numbers[:1])

            originator.place = place  # type: ignore[method-assign]
            await fake.start_listening()
            await originator.ami.wait_connected()
            second = await make_runner(originator, numbers, journal).run(asyncio.Event())

    assert second.skipped == 1 and second.placed == 3
    assert dialed(fake) == Counter(numbers)  # the cut one too, once
    assert journal.done() == set(numbers)


async def test_a_defect_preparing_one_callee_refuses_it_and_the_run_goes_on(settings, tmp_path):
    await load(settings, inventory())
    numbers = callees(5)
    before = background_errors("campaign-run")
    journal = Journal(tmp_path / "j")
    with capture_logs() as logs:
        async with FakeAMI() as fake:
            async with originator_for(settings, fake) as originator:
                prepare = originator.prepare

                async def fails_for_one(campaign_id, callee):  # type: ignore[no-untyped-def]
                    if callee == numbers[2]:
                        raise RuntimeError("injected defect")
                    return await prepare(campaign_id, callee)

                originator.prepare = fails_for_one  # type: ignore[method-assign]
                summary = await make_runner(originator, numbers, journal).run(asyncio.Event())

    assert summary.placed == 4 and summary.refused == 1
    assert summary.refusals == [f"{numbers[2]}: not dialed: RuntimeError('injected defect')"]
    assert dialed(fake) == Counter(numbers[:2] + numbers[3:])
    assert journal.done() == set(numbers) - {numbers[2]}  # a later run tries it again
    assert background_errors("campaign-run") == before + 1
    [failure] = [e for e in logs if e["event"] == "background loop step failed; going on"]
    assert failure["loop"] == "campaign-run" and failure["callee"] == numbers[2]


# ---- pieces -----------------------------------------------------------------------------------


async def test_rate_limiter_is_fair_and_never_bursts():
    limiter = RateLimiter(50)
    done: list[tuple[int, float]] = []

    async def take(i: int) -> None:
        await limiter.acquire()
        done.append((i, time.monotonic()))

    started = time.monotonic()
    await asyncio.gather(*(take(i) for i in range(6)))
    assert [i for i, _ in done] == list(range(6))  # in the order asked
    times = [t for _, t in done]
    assert times[0] - started < 0.01  # the first at once ...
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) > 0.015  # ... then 1/50 s
    # Idle for a while: still only one at once afterwards.
    await asyncio.sleep(0.1)
    first = time.monotonic()
    await asyncio.gather(limiter.acquire(), limiter.acquire())
    assert time.monotonic() - first > 0.015


async def test_a_cancelled_wait_gives_its_slot_back():
    limiter = RateLimiter(10)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.wait([waiter])
    started = time.monotonic()
    await limiter.acquire()  # the slot the cancelled one held, not the one after it
    assert time.monotonic() - started < 0.1 + 0.02


def test_trunk_limiter_is_one_per_trunk():
    channel = "PJSIP/{callee}@runner-test-trunk"
    assert trunk_of(channel) == "PJSIP/runner-test-trunk"
    shared = trunk_limiter(channel, 20)
    assert trunk_limiter("PJSIP/{callee}@runner-test-trunk", 20) is shared
    assert trunk_limiter("PJSIP/{callee}@runner-other-trunk", 20) is not shared
    with pytest.raises(ValueError, match="already limited"):
        trunk_limiter(channel, 30)


def test_read_callees(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text(
        "\ufeff# May list\nName;Phone;City\n\nIvan;+7 916 123-45-67;Moscow\n"
        "# a comment\nOlga;8 (916) 123-45-67;Tver\nPetr;79161112233;\nAnna;12;Kazan\nNo;;X\n",
        encoding="utf-8",
    )
    # Raw values kept; the second form of the same number dropped; "12" left for the
    # originator to refuse.
    assert read_callees(path) == ["+7 916 123-45-67", "79161112233", "12"]
    bare = tmp_path / "bare.csv"
    bare.write_text("79161234567\n79161112233\n", encoding="utf-8")
    assert read_callees(bare) == ["79161234567", "79161112233"]
    british = tmp_path / "uk.csv"
    british.write_text("020 7946 0000\n+44 20 7946 0000\n", encoding="utf-8")
    assert read_callees(british, "GB") == ["020 7946 0000"]  # one number, in its region


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the callee list"),
        (b"\xff\xfe\x00bad", "cannot read the callee list"),
        (b"# only a comment\n\n", "no callees"),
        (b"name,email\nIvan,ivan@example.com\n", "no usable column: no header names a"),
        (b"phone,name\nIvan,79161234567\n", "no usable column: the 'phone' column"),
    ],
)
def test_read_callees_refuses_a_bad_file(tmp_path, content, message):
    path = tmp_path / "list.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_callees(path)


def test_journal_appends_and_reads_back(tmp_path):
    path = journal_path(tmp_path / "state", "spring-sale", Path("lists") / "may.csv")
    assert path == tmp_path / "state" / "spring-sale-may.journal"
    journal = Journal(path)
    assert journal.done() == set()
    journal.append("79161234567")
    journal.append("79161112233")
    assert Journal(path).done() == {"79161234567", "79161112233"}
    assert path.read_text() == "79161234567\n79161112233\n"


async def test_the_journal_is_read_off_the_event_loop(settings, tmp_path):
    # A journal on a slow disk, played by a FIFO that is written only once the loop answered.
    await load(settings, inventory())
    numbers = callees(2)
    fifo = tmp_path / "j"
    os.mkfifo(fifo)
    write_end: list[int] = []

    def journal_being_read() -> None:
        deadline = time.monotonic() + PATIENCE
        while not write_end and time.monotonic() < deadline:
            try:  # opens once the run has the FIFO open for reading
                write_end.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                time.sleep(0.005)

    def write_the_journal() -> None:
        os.write(write_end[0], "\n".join(numbers).encode() + b"\n")
        os.close(write_end[0])

    watch = LoopWatch()
    thread = watch.in_thread(journal_being_read, write_the_journal)
    async with FakeAMI() as fake:
        async with originator_for(settings, fake) as originator:
            summary = await make_runner(originator, numbers, Journal(fifo)).run(asyncio.Event())
    await asyncio.to_thread(thread.join)
    assert watch.answered
    assert summary.skipped == 2 and fake.originates == []


def test_journal_strikes_out_a_callee_not_dialed(tmp_path):
    journal = Journal(tmp_path / "j")
    journal.append("79161234567")
    journal.append("79161112233")
    journal.strike("79161234567")
    assert journal.done() == {"79161112233"}
    journal.append("79161234567")  # redialed later
    assert journal.done() == {"79161234567", "79161112233"}


def test_format_summary():
    summary = RunSummary(
        "spring-sale",
        total=10,
        skipped=2,
        placed=5,
        refused=1,
        refusals=["12: not a number"],
        outcomes=Counter({Outcome.ANSWERED: 3, Outcome.BUSY: 2}),
        paused_seconds=1.5,
        interrupted=True,
        remaining=2,
        elapsed=3.0,
    )
    text = format_summary(summary)
    assert "campaign spring-sale: 10 callees" in text
    assert "answered" in text and "busy" in text and "no_answer" not in text
    assert "12: not a number" in text and "paused" in text
    assert "interrupted: 2 not dialed yet" in text


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress(done: int, paused: str | None = None) -> RunProgress:
    return RunProgress(
        total=4,
        done=done,
        skipped=0,
        placed=done,
        refused=0,
        in_flight=1,
        outcomes={Outcome.ANSWERED: done},
        paused=paused,
    )


def test_terminal_progress_draws_a_bar_on_a_tty():
    stream, now = _Tty(), [0.0]
    bar = TerminalProgress(stream, clock=lambda: now[0])
    bar(_progress(1))
    bar(_progress(2))  # too soon: not redrawn
    now[0] += 1
    bar(_progress(2, paused="store unavailable"))
    bar(_progress(4))  # the last one is always drawn, once
    bar(_progress(4))
    bar.close()
    lines = stream.getvalue().split("\r")[1:]
    assert len(lines) == 3
    assert lines[0].startswith("[######..................] 1/4")
    assert "PAUSED: store unavailable" in lines[1]
    assert lines[2].startswith("[########################] 4/4") and lines[2].endswith("\n")


def test_terminal_progress_logs_counters_elsewhere():
    stream, now = io.StringIO(), [0.0]
    progress = TerminalProgress(stream, interval=5.0, clock=lambda: now[0])
    with capture_logs() as logs:
        progress(_progress(1))  # within the first 5 s: quiet
        now[0] += 5
        progress(_progress(2))
        progress(_progress(3))
    assert stream.getvalue() == ""
    assert [(e["event"], e["done"]) for e in logs] == [("campaign progress", 2)]
    assert logs[0]["answered"] == 2


# ---- the campaign changes during a run --------------------------------------------------------


def with_campaign_state(originator: Originator, campaign: str, state: CampaignState) -> None:
    """What a change from the control plane does: the next snapshot has the campaign so."""
    snapshot = originator.routing()
    campaigns = {**snapshot.campaigns, campaign: replace(snapshot.campaigns[campaign], state=state)}
    changed = replace(snapshot, campaigns=campaigns)
    originator.routing = lambda: changed  # type: ignore[method-assign]


async def test_a_paused_campaign_waits_and_dials_when_it_runs_again(settings, tmp_path):
    await load(settings, inventory())
    numbers = callees(6)
    paused: list[str | None] = []

    def on_progress(progress: RunProgress) -> None:
        if not paused or paused[-1] != progress.paused:
            paused.append(progress.paused)

    async with FakeAMI() as fake, originator_for(settings, fake) as originator:
        with_campaign_state(originator, "spring-sale", CampaignState.PAUSED)
        runner = make_runner(originator, numbers, Journal(tmp_path / "j"), progress=on_progress)
        run = asyncio.create_task(runner.run(asyncio.Event()))
        await eventually(lambda: bool(paused) and paused[-1] == "campaign paused")
        await asyncio.sleep(0.3)
        assert fake.originate_count == 0
        with_campaign_state(originator, "spring-sale", CampaignState.RUNNING)
        summary = await asyncio.wait_for(run, timeout=10)
    assert summary.placed == 6 and summary.refused == 0
    assert sorted(dialed(fake)) == numbers
    assert paused[-1] is None and summary.paused_seconds > 0


async def test_a_campaign_finished_during_the_run_stops_it_and_says_why(settings, tmp_path):
    await load(settings, inventory())
    numbers = callees(20)
    async with FakeAMI(time_scale=0.01) as fake, originator_for(settings, fake) as originator:
        runner = make_runner(originator, numbers, Journal(tmp_path / "j"), cps=50, concurrency=2)

        async def finish() -> None:
            await eventually(lambda: runner.summary.placed >= 3)
            with_campaign_state(originator, "spring-sale", CampaignState.FINISHED)

        summary, _ = await asyncio.gather(runner.run(asyncio.Event()), finish())
    assert summary.stopped_because == "campaign spring-sale is finished"
    assert summary.refused == 0  # the callees were not refused one by one
    assert summary.interrupted and summary.placed + summary.remaining == 20
    assert "stopped: campaign spring-sale is finished" in format_summary(summary)


async def test_originate_refused_by_asterisk_counts_as_refused_not_placed(settings, tmp_path):
    await load(settings, inventory())
    async with FakeAMI() as fake, originator_for(settings, fake) as originator:
        fake.originate_not_permitted = True
        summary = await make_runner(originator, callees(3), Journal(tmp_path / "j")).run(
            asyncio.Event()
        )
    assert (summary.placed, summary.refused) == (0, 3)
    assert summary.refusals[0].endswith("Originate refused: Permission denied")
