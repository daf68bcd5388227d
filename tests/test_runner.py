"""`campaign run` against real parts: Redis, the fake AMI peer, AMIClient, Originator, a Dialer:
a list queued for one campaign and dialed from this process."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from conftest import background_errors, free_port
from dialer_helpers import (
    CAMPAIGN,
    Routing,
    callees,
    dialed,
    dialing_settings,
    eventually,
    inventory,
    running_dialer,
)
from engine_helpers import RESERVED, base_inventory, load
from fake_ami import RECORDED_OUTCOMES, FakeAMI
from zvonok_agi.app import redis_client
from zvonok_agi.config import Settings
from zvonok_agi.outbound import dialer as dialer_module
from zvonok_agi.outbound.dialer import Dialer
from zvonok_agi.outbound.originator import DialRefused
from zvonok_agi.outbound.queue import Progress, split_callees
from zvonok_agi.outbound.runner import (
    RunReport,
    TerminalProgress,
    format_summary,
    read_callees,
    render_progress,
    run_campaign,
)
from zvonok_agi.routing.model import CampaignState, Outcome
from zvonok_agi.store.embedded import EmbeddedRedis
from zvonok_agi.store.history import CallbackHistory
from zvonok_agi.store.routing_data import RoutingData

CASES = list(RECORDED_OUTCOMES)


@contextlib.asynccontextmanager
async def dialer_for(
    settings: Settings, fake: FakeAMI, *, campaign: str = CAMPAIGN, **options: Any
) -> AsyncIterator[Dialer]:
    async with running_dialer(
        dialing_settings(settings, [fake]), only=campaign, **options
    ) as dialer:
        yield dialer


async def run(
    dialer: Dialer,
    numbers: list[str],
    stop: asyncio.Event | None = None,
    *,
    campaign: str = CAMPAIGN,
    progress: Callable[[Progress, str | None], None] | None = None,
    cps: float = 100.0,
    concurrency: int | None = 4,
) -> RunReport:
    return await run_campaign(
        dialer,
        campaign,
        numbers,
        stop or asyncio.Event(),
        cps=cps,
        concurrency=concurrency,
        progress=progress,
    )


def track_pauses(paused: list[str | None]) -> Callable[[Progress, str | None], None]:
    def on_progress(progress: Progress, why: str | None) -> None:
        if not paused or paused[-1] != why:
            paused.append(why)

    return on_progress


# ---- a whole run ------------------------------------------------------------------------------


async def test_run_settles_every_case_and_refuses_what_is_not_a_number(settings):
    await load(settings, inventory())
    numbers = callees(30)
    cases = {number: CASES[i % len(CASES)] for i, number in enumerate(numbers)}
    # A duplicate written differently and a value that is no phone number.
    listed = [*numbers, "+7 (900) 100-00-01", "not-a-number"]
    snapshots: list[Progress] = []
    async with FakeAMI(cases=cases, time_scale=0.01) as fake, dialer_for(settings, fake) as d:
        report = await run(d, listed, progress=lambda p, _: snapshots.append(p))
    progress = report.progress
    assert progress is not None and progress.finished
    assert progress.outcomes == Counter(RECORDED_OUTCOMES[case] for case in cases.values())
    assert (report.given, report.queued, report.placed) == (31, 30, 30)
    assert progress.invalid == 1 and report.refusals == {"not-a-number": "not a phone number"}
    assert not report.interrupted
    assert dialed(fake) == Counter(numbers)  # each once: the duplicate was not dialed
    assert max(s.dialing for s in snapshots) <= 4
    assert snapshots[-1].done == 30 and snapshots[-1].dialing == 0
    text = format_summary(report)
    assert "31 callees in the list" in text and "not-a-number: not a phone number" in text


async def test_an_interrupted_run_resumes_without_dialing_anyone_twice(settings):
    await load(settings, inventory())
    numbers = callees(20)
    stop = asyncio.Event()

    def stop_after_four(progress: Progress, _: str | None) -> None:
        if progress.done >= 4:
            stop.set()

    async with FakeAMI(time_scale=0.01) as fake:
        async with dialer_for(settings, fake) as d:
            first = await run(d, numbers, stop, cps=10, concurrency=3, progress=stop_after_four)
        assert first.interrupted and first.progress is not None and first.progress.waiting > 0
        assert fake.originate_count == first.placed  # calls in flight ended normally
        assert first.progress.dialing == 0
        async with dialer_for(settings, fake) as d:
            second = await run(d, numbers)
    assert second.queued == 0  # all queued before
    assert second.placed == 20 - first.placed and not second.interrupted
    assert dialed(fake) == Counter(numbers)  # each exactly once
    assert "interrupted: " in format_summary(first) and "interrupted" not in format_summary(second)


async def test_a_stop_before_the_start_dials_nobody(settings):
    await load(settings, inventory())
    stop = asyncio.Event()
    stop.set()
    async with FakeAMI() as fake, dialer_for(settings, fake) as d:
        report = await run(d, callees(5), stop)
    assert fake.originates == []
    assert report.interrupted and report.progress and report.progress.waiting == 5


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
async def test_a_refused_campaign_queues_nothing_and_places_no_call(
    settings, make_inventory, campaign, reason
):
    await load(settings, make_inventory())
    async with FakeAMI() as fake, dialer_for(settings, fake, campaign=campaign) as d:
        with pytest.raises(DialRefused, match=reason):
            await run(d, callees(3), campaign=campaign)
        assert (await d.queue.progress(campaign)).queued == 0
    assert fake.originates == []


async def test_a_campaign_finished_during_the_run_stops_it_and_says_why(settings):
    await load(settings, inventory())
    client = redis_client(settings.redis.url, settings)
    routing = Routing(await RoutingData(client, settings.redis.key_prefix).load())
    await client.aclose()

    def finish_after_three(progress: Progress, _: str | None) -> None:
        if progress.done >= 3:
            routing.set_state(CAMPAIGN, CampaignState.FINISHED)

    async with (
        FakeAMI(time_scale=0.01) as fake,
        dialer_for(settings, fake, routing=routing) as d,
    ):
        report = await run(d, callees(20), cps=30, concurrency=2, progress=finish_after_three)
    assert report.stopped_because == "campaign spring-sale is finished"
    assert report.progress and report.progress.refused == 0  # not refused one by one
    assert report.interrupted and report.placed < 20
    assert "stopped: campaign spring-sale is finished" in format_summary(report)


async def test_a_paused_campaign_waits_and_dials_when_it_runs_again(settings):
    await load(settings, inventory())
    client = redis_client(settings.redis.url, settings)
    routing = Routing(await RoutingData(client, settings.redis.key_prefix).load())
    await client.aclose()
    routing.set_state(CAMPAIGN, CampaignState.PAUSED)
    paused: list[str | None] = []
    async with FakeAMI() as fake, dialer_for(settings, fake, routing=routing) as d:
        running = asyncio.create_task(run(d, callees(6), progress=track_pauses(paused)))
        await eventually(lambda: "campaign paused" in paused)
        await asyncio.sleep(0.3)
        assert fake.originate_count == 0
        routing.set_state(CAMPAIGN, CampaignState.RUNNING)
        report = await asyncio.wait_for(running, 10)
    assert report.placed == 6 and sorted(dialed(fake)) == callees(6)
    assert paused[-1] is None


async def test_pool_at_capacity_waits_for_the_next_minute(settings, monkeypatch):
    monkeypatch.setattr(dialer_module, "POOL_RETRY", 0.02)
    settings = replace(settings, outbound=replace(settings.outbound, pool_calls_per_minute=2))
    await load(settings, base_inventory())  # pool-promo: one service number
    now = [1_900_000_000.0]
    async with FakeAMI() as fake, dialer_for(settings, fake, campaign="pool-promo") as d:
        d.hosts[0].originator.clock = lambda: now[0]
        running = asyncio.create_task(run(d, callees(4), campaign="pool-promo"))
        await eventually(lambda: fake.originate_count == 2)
        await asyncio.sleep(0.2)
        assert fake.originate_count == 2  # the cap holds: nobody dialed over it
        now[0] += 60  # the next minute
        report = await asyncio.wait_for(running, 10)
    assert report.placed == 4 and report.progress and report.progress.refused == 0
    assert dialed(fake) == Counter(callees(4))


async def test_originate_refused_by_asterisk_counts_as_refused_not_placed(settings):
    await load(settings, inventory())
    async with FakeAMI() as fake, dialer_for(settings, fake) as d:
        fake.originate_not_permitted = True
        report = await run(d, callees(3))
    assert report.progress and (report.progress.done, report.progress.refused) == (0, 3)
    assert set(report.refusals.values()) == {"Originate refused: Permission denied"}


# ---- outages ----------------------------------------------------------------------------------


async def test_redis_down_pauses_the_run_and_it_resumes_when_back(settings, tmp_path):
    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server.start()
    settings = replace(settings, redis=replace(settings.redis, url=server.url))
    numbers = callees(24)
    paused: list[str | None] = []

    async def outage() -> tuple[int, int]:
        await eventually(lambda: fake.originate_count >= 8)
        await asyncio.to_thread(server.stop)
        await eventually(lambda: "store unavailable" in paused)
        await asyncio.sleep(0.2)  # an Originate already on its way may still land
        before = fake.originate_count
        await asyncio.sleep(1.2)
        during = fake.originate_count
        await asyncio.to_thread(server.start)
        return before, during

    try:
        await load(settings, inventory())
        async with FakeAMI() as fake, dialer_for(settings, fake) as d:
            report, (before, during) = await asyncio.gather(
                run(d, numbers, cps=20, concurrency=3, progress=track_pauses(paused)), outage()
            )
        # Every Originate sent has its attempt in the history: a callback is recognised.
        client = redis_client(server.url, settings)
        try:
            history = CallbackHistory(client, settings.redis.key_prefix)
            recorded = []
            for action in fake.originates:
                callee = action["Channel"].partition("/")[2].partition("@")[0]
                kept = await history.attempts(action["CallerID"].strip("<>"), callee)
                recorded.append(action["ChannelId"] in {a.id for a in kept})
        finally:
            await client.aclose()
    finally:
        server.stop()
    assert during == before < len(numbers)  # nothing dialed while the store was down
    assert "store unavailable" in paused and paused[-1] is None
    assert report.progress and report.progress.finished and not report.interrupted
    assert dialed(fake) == Counter(numbers)
    assert all(recorded)


@pytest.mark.parametrize("how", ["drop", "after_queued"])
async def test_a_dropped_ami_link_dials_nobody_twice_and_the_run_goes_on(settings, how):
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
        async with dialer_for(settings, fake) as d:
            report, _ = await asyncio.gather(run(d, numbers, cps=50), cut_the_link())
    assert fake.connections >= 2  # the client reconnected
    assert dialed(fake) == Counter(numbers)  # every callee once: none twice, none lost
    assert report.progress and report.progress.finished and report.placed == 16
    # A call whose events went with the link settles when the link is back, from what
    # CoreShowChannels says; the others rang out.
    assert set(report.progress.outcomes) <= {Outcome.FAILED, Outcome.NO_ANSWER}
    assert report.progress.outcomes[Outcome.NO_ANSWER] >= len(numbers) - 4 - 1


async def test_the_run_pauses_while_asterisk_is_unreachable(settings):
    await load(settings, inventory())
    numbers = callees(12)
    paused: list[str | None] = []

    async def outage() -> tuple[int, int]:
        await eventually(lambda: fake.originate_count >= 4)
        await fake.stop_listening()
        fake.drop()
        await eventually(lambda: "AMI link down" in paused)
        before = fake.originate_count
        await asyncio.sleep(0.4)
        during = fake.originate_count
        await fake.start_listening()
        return before, during

    async with FakeAMI() as fake, dialer_for(settings, fake) as d:
        report, (before, during) = await asyncio.gather(
            run(d, numbers, cps=50, progress=track_pauses(paused)), outage()
        )
    assert during == before < len(numbers)
    assert "AMI link down" in paused and paused[-1] is None
    assert report.placed == len(numbers)
    assert dialed(fake) == Counter(numbers)


async def test_a_call_whose_originate_never_left_is_dialed_later(settings):
    await load(settings, inventory())
    numbers = callees(6)
    async with FakeAMI() as fake, dialer_for(settings, fake) as d:
        originator = d.hosts[0].originator
        place, cut = originator.place, []

        async def place_after_a_cut(attempt, caller_id):  # type: ignore[no-untyped-def]
            if attempt.callee == numbers[2] and not cut:
                cut.append(attempt.id)  # the link falls between prepare and send
                fake.drop()
                await eventually(lambda: not originator.ami.connected)
            return await place(attempt, caller_id)

        originator.place = place_after_a_cut  # type: ignore[method-assign]
        # One call at a time: a call still ringing when the link fell would lose its events
        # with the link (as on a real Asterisk) and be settled as failed: not this test's case.
        report = await run(d, numbers, concurrency=1)
    assert cut
    assert dialed(fake) == Counter(numbers)  # the cut one too, once
    assert report.progress and report.progress.outcomes == {Outcome.ANSWERED: len(numbers)}


async def test_a_defect_with_one_callee_refuses_it_and_the_run_goes_on(settings):
    await load(settings, inventory())
    numbers = callees(5)
    before = background_errors("dialer")
    with capture_logs() as logs:
        async with FakeAMI() as fake, dialer_for(settings, fake) as d:
            originator = d.hosts[0].originator
            prepare = originator.prepare

            async def fails_for_one(campaign_id, callee, **options):  # type: ignore[no-untyped-def]
                if callee == numbers[2]:
                    raise RuntimeError("injected defect")
                return await prepare(campaign_id, callee, **options)

            originator.prepare = fails_for_one  # type: ignore[method-assign]
            report = await run(d, numbers)
    assert report.placed == 4 and report.progress and report.progress.refused == 1
    assert report.refusals == {numbers[2]: "not dialed: RuntimeError('injected defect')"}
    assert dialed(fake) == Counter(numbers[:2] + numbers[3:])
    assert background_errors("dialer") == before + 1
    [failure] = [e for e in logs if e["event"] == "background loop step failed; going on"]
    assert failure["loop"] == "dialer" and failure["callee"] == numbers[2]


async def test_a_defect_once_the_originate_may_have_left_settles_that_call_failed(settings):
    await load(settings, inventory())
    numbers = callees(4)
    before = background_errors("dialer")
    async with FakeAMI() as fake, dialer_for(settings, fake) as d:
        originator = d.hosts[0].originator
        place = originator.place

        async def fails_after_sending(attempt, caller_id):  # type: ignore[no-untyped-def]
            result = await place(attempt, caller_id)
            if attempt.callee == numbers[1]:
                raise RuntimeError("injected defect")
            return result

        originator.place = fails_after_sending  # type: ignore[method-assign]
        report = await run(d, numbers)
    assert dialed(fake) == Counter(numbers)  # once each, the failed one too
    assert report.progress and report.progress.refused == 0
    assert report.progress.outcomes == {Outcome.ANSWERED: 3, Outcome.FAILED: 1}
    assert background_errors("dialer") == before + 1


# ---- pieces -----------------------------------------------------------------------------------


def test_read_callees(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text(
        "\ufeff# May list\nName;Phone;City\n\nIvan;+7 916 123-45-67;Moscow\n"
        "# a comment\nOlga;8 (916) 123-45-67;Tver\nPetr;79161112233;\nAnna;12;Kazan\nNo;;X\n",
        encoding="utf-8",
    )
    # Raw values kept; the second form of the same number dropped; "12" left to be refused.
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


def test_split_callees():
    numbers, invalid = split_callees(["8 916 123-45-67", "+79161234567", "12", " 12 ", "x"])
    assert numbers == ["79161234567"]
    assert invalid == [("12", "not a phone number"), ("x", "not a phone number")]


def _progress(done: int, dialing: int = 1) -> Progress:
    return Progress(CAMPAIGN, queued=4, dialing=dialing, outcomes={Outcome.ANSWERED: done})


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_progress_draws_a_bar_on_a_tty():
    stream, now = _Tty(), [0.0]
    bar = TerminalProgress(stream, clock=lambda: now[0])
    bar(_progress(1))
    bar(_progress(2))  # too soon: not redrawn
    now[0] += 1
    bar(_progress(2), "store unavailable")
    bar(_progress(4, dialing=0))  # the last one is always drawn, once
    bar(_progress(4, dialing=0))
    bar.close()
    lines = stream.getvalue().split("\r")[1:]
    assert len(lines) == 3
    assert lines[0].startswith("[######..................] 1/4  dialing 1")
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


def test_render_progress_counts_refusals_as_done():
    progress = Progress(CAMPAIGN, queued=3, invalid=1, refused=1, outcomes={Outcome.BUSY: 1})
    assert render_progress(progress, width=4).startswith("[###.] 3/4  dialing 0  busy 1")
