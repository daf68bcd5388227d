"""Placing outbound calls: the real Originator, AMIClient and Redis against the fake AMI peer.

The fake replays what a real Asterisk 22 sent for each recorded Originate case; Redis is the
test session's real server (its own key prefix per test). Covers issue 3's acceptance lines on
the caller ID, the attempt recorded before the Originate, the link lost after "Originate
successfully queued", a store outage, and 1,000 pool calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import pytest
from structlog.testing import capture_logs

from conftest import background_errors, free_port
from engine_helpers import load
from fake_ami import ORIGINATE_CASES, RECORDED_OUTCOMES, Chunk, FakeAMI, Recording, packets
from zvonok_agi import phone
from zvonok_agi.agi import variables
from zvonok_agi.ami.client import AMIClient
from zvonok_agi.ami.protocol import Action
from zvonok_agi.app import redis_client
from zvonok_agi.config import Settings
from zvonok_agi.outbound import originator as originator_module
from zvonok_agi.outbound.originator import (
    CampaignPaused,
    DialRefused,
    DialResult,
    Originator,
    StoreUnavailable,
)
from zvonok_agi.routing import scenario as scenarios
from zvonok_agi.routing.callerid import PoolAtCapacity
from zvonok_agi.routing.model import Attempt, CampaignKind, CampaignState, Outcome
from zvonok_agi.store.embedded import EmbeddedRedis
from zvonok_agi.store.history import CallbackHistory
from zvonok_agi.store.number_health import NumberHealthStore
from zvonok_agi.store.routing_data import RoutingData, RoutingSnapshot

EXPECTED = RECORDED_OUTCOMES
CASE_CALLEES = {case: f"7900111000{i}" for i, case in enumerate(ORIGINATE_CASES)}

RESERVED = "74951234567"  # acme's, active
OLDCO_NUMBER = "74957654321"  # oldco's
DISABLED = "74957777777"  # acme's, disabled
NEWBIE_NUMBER = "74958888888"  # reserved by newbie back when it was verified
MOSCOW_POOL = ("74950000001", "74950000002")
POOL = (*MOSCOW_POOL, "78120000001", "73830000001", "78430000001")  # + SPb, Novosibirsk, Kazan
MOBILE = "79161234567"


def inventory() -> dict[str, Any]:
    def outbound(cid: str, account: str, caller_id: str = "pool", **extra: Any) -> dict:
        return {
            "id": cid,
            "account": account,
            "kind": "outbound",
            "caller_id": caller_id,
            "accept_inbound": True,
            **extra,
        }

    return {
        "accounts": [
            {"id": "acme", "verified": True},
            {"id": "oldco", "verified": True},
            {"id": "newbie", "verified": False},
        ],
        "campaigns": [
            outbound("spring-sale", "acme", RESERVED),
            outbound("acme-pool", "acme"),
            outbound("pool-promo", "newbie"),
            outbound("newbie-own", "newbie", NEWBIE_NUMBER),
            outbound("newbie-acme", "newbie", RESERVED),
            outbound("acme-oldco", "acme", OLDCO_NUMBER),
            outbound("acme-disabled", "acme", DISABLED),
            outbound("acme-service", "acme", MOSCOW_POOL[0]),
            outbound("acme-unknown", "acme", "74990000000"),
            outbound("acme-done", "acme", RESERVED, state="finished"),
            {"id": "support", "account": "acme", "kind": "inbound"},
        ],
        "numbers": [
            {"did": RESERVED, "pool": "reservable", "owner": "acme", "inbound_campaign": "support"},
            {"did": OLDCO_NUMBER, "pool": "reservable", "owner": "oldco"},
            {"did": DISABLED, "pool": "reservable", "owner": "acme", "status": "disabled"},
            {"did": NEWBIE_NUMBER, "pool": "reservable", "owner": "newbie"},
            *({"did": did, "pool": "service"} for did in POOL),
        ],
        "attempts": [],
    }


REFUSED_CAMPAIGNS = {
    "newbie-own": "not verified",  # an unverified account set to its own reserved number
    "newbie-acme": "not verified",  # ... or to another account's
    "acme-oldco": "not reserved by account acme",  # another account's reserved number
    "acme-disabled": "disabled",
    "acme-service": "service number",
    "acme-unknown": "not one of our numbers",
    "acme-done": "finished",
    "support": "not an outbound campaign",
    "no-such-campaign": "no campaign",
}


class Clock:
    """The Originator's clock, moved by hand (minutes pass without waiting)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def next_minute(self) -> None:
        self.now = (self.now // 60 + 1) * 60 + 0.001


@dataclass
class Dialer:
    fake: FakeAMI
    ami: AMIClient
    originator: Originator
    history: CallbackHistory
    snapshot: RoutingSnapshot
    settings: Settings

    async def keys(self, pattern: str) -> list[str]:
        prefix = self.settings.redis.key_prefix
        found = await self.history.redis.keys(f"{prefix}{pattern}")
        return sorted(k.decode().removeprefix(prefix) for k in found)


def ami_client(fake: FakeAMI, **options: Any) -> AMIClient:
    settings: dict[str, Any] = {
        "action_timeout": 2.0,
        "ping_interval": 60.0,
        "reconnect_base": 0.01,
        "reconnect_cap": 0.05,
    }
    settings.update(options)
    return AMIClient("127.0.0.1", fake.port, "lab", "labsecret", **settings)


@contextlib.asynccontextmanager
async def dialer(
    settings: Settings,
    fake: FakeAMI,
    *,
    clock: Callable[[], float] = time.time,
    seed: int = 1,
    **outbound: Any,
) -> AsyncIterator[Dialer]:
    """Inventory loaded, the fake listening, a logged-in AMIClient, an Originator on both."""
    settings = replace(settings, outbound=replace(settings.outbound, **outbound))
    await load(settings, inventory())
    client = redis_client(settings.redis.url, settings)
    prefix = settings.redis.key_prefix
    history = CallbackHistory(client, prefix, settings.routing.callback_window)
    try:
        snapshot = await RoutingData(client, prefix).load()
        async with fake, ami_client(fake) as ami:
            originator = Originator(
                ami,
                history,
                lambda: snapshot,
                settings.outbound,
                rng=random.Random(seed),
                clock=clock,
            )
            async with originator:
                yield Dialer(fake, ami, originator, history, snapshot, settings)
    finally:
        await client.aclose()


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def recorded(d: Dialer, attempt: Attempt) -> Attempt:
    """The attempt as the callback history holds it."""
    kept = await d.history.attempts(attempt.did, attempt.callee)
    [found] = [a for a in kept if a.id == attempt.id]
    return found


@pytest.fixture(autouse=True)
def short_hangup_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    # A failed OriginateResponse with no Hangup (unknown endpoint) settles after this grace.
    monkeypatch.setattr(originator_module, "HANGUP_GRACE", 0.05)


# --- every recorded case ------------------------------------------------------------------------


class SwappedFakeAMI(FakeAMI):
    """Replays each case with its Hangup and its OriginateResponse in the other order (Asterisk
    gives no order between the two: the events come from different threads)."""

    swapped = 0

    async def _replay(self, session: Any, rec: Recording, action: Action) -> None:
        sent = [Chunk(c.at, c.direction, p) for c in rec.chunks for p in packets(c.data)]
        response = next(i for i, c in enumerate(sent) if b"Event: OriginateResponse" in c.data)
        hangups = [i for i, c in enumerate(sent) if c.data.startswith(b"Event: Hangup\r\n")]
        if hangups:
            hangup = hangups[0]
            sent[response], sent[hangup] = (
                replace(sent[response], data=sent[hangup].data),
                replace(sent[hangup], data=sent[response].data),
            )
            self.swapped += 1
        await super()._replay(session, replace(rec, chunks=tuple(sent)), action)


@pytest.mark.parametrize("order", ["recorded", "swapped"])
@pytest.mark.parametrize("case", ORIGINATE_CASES)
async def test_each_recorded_case_settles_to_its_outcome(
    settings: Settings, case: str, order: str
) -> None:
    callee = CASE_CALLEES[case]
    peer = FakeAMI if order == "recorded" else SwappedFakeAMI
    async with dialer(settings, peer(cases={callee: case})) as d:
        result = await d.originator.dial("pool-promo", callee)
        assert result.outcome is EXPECTED[case], result.detail
        assert (await recorded(d, result.attempt)).outcome is EXPECTED[case]
        assert d.fake.originate_count == 1
    if order == "swapped" and EXPECTED[case] is not Outcome.FAILED:
        assert isinstance(d.fake, SwappedFakeAMI) and d.fake.swapped == 1
    if case == "unknown_endpoint":
        assert result.detail == "OriginateResponse Reason 0, no Hangup"
    elif case != "answered":
        cause = 17 if case.startswith("busy") else 19
        assert result.detail.endswith(f"Hangup Cause {cause}")


async def test_all_cases_at_once_each_settles_on_its_own_events(settings: Settings) -> None:
    # Seven calls in flight on one link: each outcome is matched by its ChannelId.
    fake = FakeAMI(cases={callee: case for case, callee in CASE_CALLEES.items()}, time_scale=0.001)
    async with dialer(settings, fake) as d:
        results = await asyncio.gather(
            *(d.originator.dial("acme-pool", callee) for callee in CASE_CALLEES.values())
        )
    for case, result in zip(CASE_CALLEES, results, strict=True):
        assert result.attempt.callee == CASE_CALLEES[case]
        assert result.outcome is EXPECTED[case], (case, result.detail)


async def test_a_failure_handling_an_event_is_logged_counted_and_calls_go_on(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A defect in event handling hits one call's OriginateResponse. That call settles failed
    # at once (its outcome is unknown) rather than after outcome_timeout; the next one is read
    # as always.
    real = originator_module.from_originate_response
    injected: list[RuntimeError] = []

    def fails_once(success: bool, reason: int | None) -> Outcome | None:
        if not injected:
            injected.append(RuntimeError("injected defect"))
            raise injected[0]
        return real(success, reason)

    monkeypatch.setattr(originator_module, "from_originate_response", fails_once)
    before = background_errors("originator-events")
    fake = FakeAMI(cases={CASE_CALLEES["busy"]: "busy"})
    with capture_logs() as logs:
        async with dialer(settings, fake, outcome_timeout=60.0) as d:
            async with asyncio.timeout(10):  # neither call may wait for outcome_timeout
                first = await d.originator.dial("pool-promo", CASE_CALLEES["answered"])
                second = await d.originator.dial("pool-promo", CASE_CALLEES["busy"])

    assert first.outcome is Outcome.FAILED
    assert first.detail == "handling OriginateResponse failed: RuntimeError('injected defect')"
    assert second.outcome is Outcome.BUSY
    assert background_errors("originator-events") == before + 1
    [failure] = [e for e in logs if e["event"] == "background loop step failed; going on"]
    assert failure["loop"] == "originator-events" and failure["log_level"] == "error"
    assert failure["exc_info"] is injected[0] and failure["ami_event"] == "OriginateResponse"


# --- what the Originate carries -----------------------------------------------------------------


async def test_each_placed_call_counts_once_in_its_numbers_health(settings: Settings) -> None:
    cases = {callee: case for case, callee in CASE_CALLEES.items()}
    async with dialer(settings, FakeAMI(cases=cases)) as d:
        health = NumberHealthStore(d.history.redis, settings.redis.key_prefix)
        d.history.health = health
        results = [await d.originator.dial("acme-pool", callee) for callee in cases]
        read = await health.read(POOL, time.time())
    answered = sum(r.outcome is Outcome.ANSWERED for r in results)
    assert sum(h.counts.placed for h in read.values()) == len(results)
    assert sum(h.counts.answered for h in read.values()) == answered >= 1
    by_number = Counter(r.attempt.did for r in results)
    assert {did: h.counts.placed for did, h in read.items() if h.counts.placed} == by_number


async def test_a_resting_pool_number_is_not_shown_while_another_is_free(
    settings: Settings,
) -> None:
    async with dialer(settings, FakeAMI()) as d:
        d.originator.rested = lambda: frozenset(POOL[1:])
        for n in range(5):  # a Moscow callee: its local numbers first, but one rests
            _, caller_id = await d.originator.prepare("acme-pool", f"7499111223{n}")
            assert caller_id.did == POOL[0]
        d.originator.rested = lambda: frozenset(POOL)  # all resting: a call still gets one
        _, caller_id = await d.originator.prepare("acme-pool", "74991112299")
        assert caller_id.did in POOL


@pytest.mark.parametrize(
    "campaign, account, caller_ids",
    [("spring-sale", "acme", {RESERVED}), ("pool-promo", "newbie", set(POOL))],
)
async def test_originate_carries_the_attempt(
    settings: Settings, campaign: str, account: str, caller_ids: set[str]
) -> None:
    async with dialer(settings, FakeAMI()) as d:
        result = await d.originator.dial(campaign, "+7 (916) 123-45-67")
        [originate] = d.fake.originates
    attempt = result.attempt
    assert attempt.callee == MOBILE and attempt.did in caller_ids
    assert (attempt.campaign, attempt.account) == (campaign, account)
    assert result.caller_id.did == attempt.did
    assert originate["ChannelId"] == attempt.id
    assert originate["Channel"] == f"PJSIP/{MOBILE}@carrier"
    assert originate["Context"] == "zvonok-route"
    assert (originate["Exten"], originate["Priority"]) == ("s", "1")
    assert originate["CallerID"] == f"<{attempt.did}>"
    assert originate["Async"] == "true"
    assert originate["Timeout"] == str(int(d.settings.outbound.ring_timeout * 1000))
    assert originate.get_all("Variable") == [
        f"ZV_CAMPAIGN={campaign}",
        f"ZV_ACCOUNT={account}",
        f"ZV_CALLEE={MOBILE}",
        f"ZV_ATTEMPT={attempt.id}",
        "ZV_ROUTE=outbound",
        f"ZV_TARGET_CONTEXT=zvonok-outbound-{campaign}",
        "ZV_TARGET_EXTEN=s",
        # No scenario: every variable of one is set empty (nothing inherited counts).
        *(f"{name}=" for name in variables.SCENARIO_VARIABLES),
        "ZV_DECIDED=1",
    ]


async def test_originate_follows_the_channel_and_context_settings(settings: Settings) -> None:
    async with dialer(
        settings, FakeAMI(), channel="PJSIP/+{callee}@trunk-b", context="zvonok-{campaign}-x"
    ) as d:
        await d.originator.dial("acme-pool", MOBILE)
        [originate] = d.fake.originates
    assert originate["Channel"] == f"PJSIP/+{MOBILE}@trunk-b"
    assert "ZV_TARGET_CONTEXT=zvonok-acme-pool-x" in originate.get_all("Variable")


async def test_originate_carries_the_campaigns_scenario_as_it_is_now(settings: Settings) -> None:
    scenario = scenarios.for_kind(
        scenarios.parse(
            {"play": "promo-may", "operators": {"endpoints": ["op-1", "op-2"], "ring_timeout": 15}}
        ),
        CampaignKind.OUTBOUND,
    )
    async with dialer(settings, FakeAMI()) as d:
        campaign = d.snapshot.campaigns["spring-sale"]
        d.snapshot.campaigns["spring-sale"] = replace(campaign, scenario=scenario)
        await d.originator.dial("spring-sale", MOBILE)
        [originate] = d.fake.originates
    sent = dict(item.split("=", 1) for item in originate.get_all("Variable"))
    assert sent["ZV_SCENARIO_CONTEXT"] == "zvonok-scenario-outbound"
    assert (sent["ZV_PLAY"], sent["ZV_DIGIT"], sent["ZV_QUEUE"]) == ("promo-may", "1", "")
    assert (sent["ZV_DIAL"], sent["ZV_RING_TIMEOUT"]) == ("PJSIP/op-1&PJSIP/op-2", "15")
    assert sent["ZV_NO_ANSWER_PLAY"] == ""
    assert originate.get_all("Variable")[-1] == "ZV_DECIDED=1"


# --- the attempt is recorded before the call ----------------------------------------------------


class CheckingFakeAMI(FakeAMI):
    """Reads the callback history the moment an Originate arrives, before answering it."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.history: CallbackHistory | None = None
        self.seen: list[tuple[Action, list[Attempt], bytes | None]] = []

    async def _on_action(self, session: Any, action: Action) -> bool:
        if action.name == "Originate" and self.history is not None:
            did = action["CallerID"].strip("<>")
            callee = action["Channel"].partition("/")[2].partition("@")[0]
            kept = await self.history.attempts(did, callee)
            last = await self.history.redis.get(self.history.last_key(callee))
            self.seen.append((action, kept, last))
        return await super()._on_action(session, action)


@pytest.mark.parametrize("campaign", ["spring-sale", "pool-promo"])
async def test_attempt_is_pending_in_the_history_before_the_originate(
    settings: Settings, campaign: str
) -> None:
    fake = CheckingFakeAMI(default_case="busy")
    async with dialer(settings, fake) as d:
        fake.history = d.history
        results = [await d.originator.dial(campaign, MOBILE) for _ in range(3)]
        settled = [(await recorded(d, r.attempt)).outcome for r in results]
    assert len(fake.seen) == 3
    for result, (action, kept, last) in zip(results, fake.seen, strict=True):
        attempt_id = action["ChannelId"]
        assert attempt_id == result.attempt.id
        at_send = {a.id: a for a in kept}
        assert at_send[attempt_id].outcome is Outcome.PENDING
        assert at_send[attempt_id].campaign == campaign
        assert last == result.attempt.did.encode()
        assert result.outcome is Outcome.BUSY
    assert settled == [Outcome.BUSY] * 3


# --- the link lost ------------------------------------------------------------------------------


async def test_link_dropped_after_originate_queued_settles_at_once_when_back(
    settings: Settings,
) -> None:
    # The link goes right after "Originate successfully queued", and the call's events with it
    # (no other session was there to get them). Once the link is back, Asterisk no longer
    # lists the call: it settles then, not after outcome_timeout.
    fake = FakeAMI(drop_after_originate_queued=True)
    async with dialer(settings, fake, outcome_timeout=30.0) as d:
        started = time.monotonic()
        lost = await d.originator.dial("pool-promo", MOBILE)
        took = time.monotonic() - started
        assert lost.outcome is Outcome.FAILED
        assert lost.detail == "gone from Asterisk without an outcome event"
        assert took < 10.0  # not after the 30 s outcome timeout
        assert [a.name for a in fake.actions].count("CoreShowChannels") == 1
        assert (await recorded(d, lost.attempt)).outcome is Outcome.FAILED
        assert fake.originate_count == 1  # never sent again, not on the new link either

        fake.drop_after_originate_queued = False
        await eventually(lambda: d.ami.connected and fake.connections == 2)
        await asyncio.sleep(0.1)
        assert fake.originate_count == 1
        following = await d.originator.dial("pool-promo", MOBILE)
        assert following.outcome is Outcome.ANSWERED
        assert fake.originate_count == 2
        assert following.attempt.id != lost.attempt.id
        assert [a["ChannelId"] for a in fake.originates] == [lost.attempt.id, following.attempt.id]
        # The lost call still counts as shown: the next one shows another number.
        assert following.attempt.did != lost.attempt.did


class EventSink(FakeAMI):
    """Keeps what each session received, by its order of connection."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.received: list[list[bytes]] = []

    async def _handle(self, reader: Any, writer: Any) -> None:
        seen: list[bytes] = []
        self.received.append(seen)
        write = writer.write
        writer.write = lambda data: (seen.append(data), write(data))[1]
        await super()._handle(reader, writer)


async def test_a_call_cut_off_by_a_lost_link_settles_by_its_events_on_the_new_one(
    settings: Settings,
) -> None:
    # ami_link_cut_during_call_conn_a/b: the link is cut while the call rings; the new link
    # lists it (it stays pending) and gets its OriginateResponse, with the old ActionID, and
    # its Hangup: it settles as the recording says, long before outcome_timeout.
    callee = "79001234567"
    fake = EventSink(cases={callee: "link_cut"}, time_scale=0.1)  # rings 0.5 s
    async with dialer(settings, fake, outcome_timeout=30.0) as d:
        call = asyncio.create_task(d.originator.dial("acme-pool", callee))
        await eventually(lambda: fake.calls_in_progress != [])
        fake.drop()
        started = time.monotonic()
        result = await call
        assert time.monotonic() - started < 10.0  # not after the 30 s outcome timeout
    assert result.outcome is Outcome.NO_ANSWER
    assert result.detail == "OriginateResponse Reason 3, Hangup Cause 19"
    assert fake.connections == 2
    second = b"".join(fake.received[1])
    assert f"Uniqueid: {result.attempt.id}".encode() in second  # listed by CoreShowChannels
    action_id = fake.originates[0].action_id
    assert (
        f"Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: {action_id}".encode()
        in second
    )
    assert [a.name for a in fake.actions].count("CoreShowChannels") == 1


async def test_an_answer_missed_while_the_link_was_down_is_read_from_the_channel_state(
    settings: Settings,
) -> None:
    # Answered while the link was down: the OriginateResponse is lost, but CoreShowChannels
    # on the new link lists the call Up.
    fake = FakeAMI(drop_after_originate_queued=True, time_scale=1.0)
    async with dialer(settings, fake, outcome_timeout=30.0) as d:
        result = await d.originator.dial("pool-promo", MOBILE)
        assert (await recorded(d, result.attempt)).outcome is Outcome.ANSWERED
    assert result.outcome is Outcome.ANSWERED
    assert result.detail == "answered (its channel is Up)"


async def test_a_call_still_listed_at_the_outcome_timeout_is_waited_for(
    settings: Settings,
) -> None:
    # It rings 1.5 s (ami_coreshowchannels at a quarter of the speed); after 0.4 s with no
    # outcome Asterisk is asked, still lists it, and its events settle it.
    callee = "79001234567"
    fake = FakeAMI(cases={callee: "ringing_listed"}, time_scale=0.25)
    async with dialer(settings, fake, outcome_timeout=0.4) as d:
        result = await d.originator.dial("acme-pool", callee)
    assert result.outcome is Outcome.NO_ANSWER
    assert result.detail == "OriginateResponse Reason 3, Hangup Cause 19"
    assert [a.name for a in fake.actions].count("CoreShowChannels") >= 2


class LosesEvents(FakeAMI):
    """Sends the replies, loses every event."""

    def _broadcast(self, events: Any) -> None:
        pass


async def test_a_call_asterisk_no_longer_has_settles_failed_at_the_outcome_timeout(
    settings: Settings,
) -> None:
    async with dialer(settings, LosesEvents(), outcome_timeout=0.3) as d:
        result = await d.originator.dial("pool-promo", MOBILE)
        assert result.outcome is Outcome.FAILED
        assert result.detail == "gone from Asterisk without an outcome event"
        # Asterisk cannot be asked (the link went and stays down): failed at the timeout.
        d.fake.drop_after_originate_queued = True
        await d.fake.stop_listening()
        result = await d.originator.dial("pool-promo", "79031234567")
        assert result.detail == "no outcome from Asterisk in time"


async def test_another_dialer_adopts_a_call_whose_dialer_stopped(settings: Settings) -> None:
    callee = "79001234567"
    fake = FakeAMI(cases={callee: "link_cut"}, time_scale=0.1)
    async with dialer(settings, fake, outcome_timeout=30.0) as d:
        first = await d.originator.prepare("acme-pool", callee)
        placing = asyncio.create_task(d.originator.place(*first))
        await eventually(lambda: fake.calls_in_progress != [])
        placing.cancel()  # the dialer that placed it stops following it
        async with (
            ami_client(fake) as ami,
            Originator(ami, d.history, lambda: d.snapshot, d.settings.outbound) as other,
        ):
            outcome, detail = await other.adopt(first[0])
            assert (outcome, detail) == (
                Outcome.NO_ANSWER,
                "OriginateResponse Reason 3, Hangup Cause 19",
            )
            # A call that is over by the time it is adopted settles at once.
            assert fake.calls_in_progress == []
            outcome, detail = await other.adopt(first[0])
            assert (outcome, detail) == (
                Outcome.FAILED,
                "gone from Asterisk without an outcome event",
            )
        assert (await recorded(d, first[0])).outcome is Outcome.FAILED
    assert fake.originate_count == 1


async def test_link_down_before_sending_fails_at_once_without_an_originate(
    settings: Settings,
) -> None:
    fake = FakeAMI()
    async with dialer(settings, fake, outcome_timeout=30.0) as d:
        await fake.stop_listening()
        fake.drop()
        await eventually(lambda: not d.ami.connected)
        started = time.monotonic()
        result = await d.originator.dial("pool-promo", MOBILE)
        assert time.monotonic() - started < 10.0  # not after the 30 s outcome timeout
        assert result.outcome is Outcome.FAILED
        assert result.detail == "AMI link down: not dialed"
        assert (result.dialed, result.retry) == (False, True)
        assert fake.originate_count == 0
        # Taken back: no attempt a callback could find, no number shown, no cap used.
        assert await d.history.attempts(result.attempt.did, MOBILE) == []
        assert await d.keys("last:*") == []
        prefix = d.settings.redis.key_prefix
        used = [await d.history.redis.get(f"{prefix}{key}") for key in await d.keys("cpm:*")]
        assert used in ([], [b"0"])
        await fake.start_listening()
        await eventually(lambda: d.ami.connected)
        assert (await d.originator.dial("pool-promo", MOBILE)).outcome is Outcome.ANSWERED
        assert fake.originate_count == 1


async def test_a_call_taken_back_gives_the_callee_its_previous_number_again(
    settings: Settings,
) -> None:
    fake = FakeAMI()
    async with dialer(settings, fake) as d:
        shown = await d.originator.dial("pool-promo", MOBILE)
        assert shown.outcome is Outcome.ANSWERED
        await fake.stop_listening()
        fake.drop()
        await eventually(lambda: not d.ami.connected)
        lost = await d.originator.dial("pool-promo", MOBILE)
        assert not lost.dialed and lost.attempt.did != shown.attempt.did
        last = await d.history.redis.get(d.history.last_key(MOBILE))
        assert last == shown.attempt.did.encode()
        assert [a.id for a in await d.history.attempts(lost.attempt.did, MOBILE)] == []


async def test_originate_refused_by_asterisk_is_not_a_placed_call(settings: Settings) -> None:
    fake = FakeAMI()
    fake.originate_not_permitted = True
    async with dialer(settings, fake) as d:
        result = await d.originator.dial("spring-sale", MOBILE)
        assert result.outcome is Outcome.FAILED
        assert result.detail == "Originate refused: Permission denied"
        assert (result.dialed, result.retry) == (False, False)
        assert fake.originate_count == 1
        assert await d.history.attempts(RESERVED, MOBILE) == []
        assert await d.keys("last:*") == []


async def test_a_paused_campaign_does_not_dial_until_it_runs_again(settings: Settings) -> None:
    async with dialer(settings, FakeAMI()) as d:
        campaign = d.snapshot.campaigns["spring-sale"]
        d.snapshot.campaigns["spring-sale"] = replace(campaign, state=CampaignState.PAUSED)
        d.originator.check_campaign("spring-sale")  # a paused campaign may be started
        with pytest.raises(CampaignPaused):
            await d.originator.dial("spring-sale", MOBILE)
        assert d.fake.originate_count == 0
        assert await d.keys("hist:*") == []
        d.snapshot.campaigns["spring-sale"] = campaign
        assert (await d.originator.dial("spring-sale", MOBILE)).outcome is Outcome.ANSWERED


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("campaign", REFUSED_CAMPAIGNS)
async def test_refused_before_any_originate(settings: Settings, campaign: str) -> None:
    async with dialer(settings, FakeAMI()) as d:
        with pytest.raises(DialRefused, match=REFUSED_CAMPAIGNS[campaign]):
            d.originator.check_campaign(campaign)
        for callee in (MOBILE, "74991112233"):
            with pytest.raises(DialRefused, match=REFUSED_CAMPAIGNS[campaign]):
                await d.originator.dial(campaign, callee)
        assert d.fake.originate_count == 0
        # Nothing recorded, no cap used: a refusal leaves no trace in the history.
        assert await d.keys("hist:*") == []
        assert await d.keys("last:*") == []
        assert await d.keys("cpm:*") == []


async def test_bad_callee_is_refused_before_anything(settings: Settings) -> None:
    async with dialer(settings, FakeAMI()) as d:
        for callee in ("", "anonymous", "12", "+7 916 abc"):
            with pytest.raises(DialRefused, match="not a phone number"):
                await d.originator.dial("pool-promo", callee)
        assert d.fake.originate_count == 0
        assert await d.keys("hist:*") == []


@pytest.mark.parametrize("campaign", ["spring-sale", "acme-pool", "pool-promo"])
async def test_allowed_campaigns_pass_the_check(settings: Settings, campaign: str) -> None:
    async with dialer(settings, FakeAMI()) as d:
        d.originator.check_campaign(campaign)


# --- the store down -----------------------------------------------------------------------------


async def test_redis_down_no_call_is_placed(tmp_path: Any, settings: Settings) -> None:
    server = EmbeddedRedis(tmp_path, port=free_port())
    server.start()
    settings = replace(settings, redis=replace(settings.redis, url=server.url))
    fake = FakeAMI()
    try:
        async with dialer(settings, fake) as d:
            assert (await d.originator.dial("pool-promo", MOBILE)).outcome is Outcome.ANSWERED
            await asyncio.to_thread(server.stop)
            for campaign in ("pool-promo", "spring-sale"):
                with pytest.raises(StoreUnavailable):
                    await d.originator.dial(campaign, "79031234567")
            assert fake.originate_count == 1
            await asyncio.to_thread(server.start)
            back = await d.originator.dial("pool-promo", "79031234567")
            assert back.outcome is Outcome.ANSWERED
            assert fake.originate_count == 2
            kept = await d.history.attempts(back.attempt.did, "79031234567")
            assert [a.id for a in kept] == [back.attempt.id]  # nothing from the outage
    finally:
        server.stop()


# --- acceptance: 1,000 pool calls ---------------------------------------------------------------

# Ten callees: four Moscow landlines, one in St Petersburg, five mobiles (no region).
CALLEES = (
    "74991110001",
    "74991110002",
    "74957770003",
    "74957770004",
    "78121110005",
    *(f"7916111000{i}" for i in range(6, 10)),
    "79031110010",
)


def region(did: str) -> str | None:
    return phone.describe(did)[1]


async def test_acceptance_1000_pool_calls_to_10_callees_from_a_pool_of_5(
    settings: Settings,
) -> None:
    assert len(set(CALLEES)) == 10 and len(POOL) == 5
    assert {region(did) for did in MOSCOW_POOL} == {"Moscow"}
    assert [region(c) for c in CALLEES].count("Moscow") == 4
    cap = 6
    clock = Clock(start=1_800_000_000.0)
    results: list[DialResult] = []
    waits = 0
    async with dialer(settings, FakeAMI(), clock=clock, pool_calls_per_minute=cap) as d:
        i = 0
        while len(results) < 1000:
            callee = CALLEES[i % len(CALLEES)]
            try:
                results.append(await d.originator.dial("pool-promo", callee))
            except PoolAtCapacity:
                waits += 1
                clock.next_minute()  # every allowed number is at its cap: wait for the next
                continue
            i += 1
            clock.now += 0.5  # 120 calls a minute asked for, 30 allowed (5 numbers x 6)
        counters = {
            key: int(await d.history.redis.get(d.settings.redis.key_prefix + key))
            for key in await d.keys("cpm:*")
        }
        history = [
            a for did in POOL for callee in CALLEES for a in await d.history.attempts(did, callee)
        ]
        assert d.fake.originate_count == 1000

    assert waits >= 1000 // (5 * cap)  # the cap did bind
    assert all(r.outcome is Outcome.ANSWERED for r in results)
    assert all(r.caller_id.from_pool and r.attempt.did in POOL for r in results)

    # The history holds every call, settled; the cap counters never passed the cap.
    assert sorted(a.id for a in history) == sorted(r.attempt.id for r in results)
    assert all(a.outcome is Outcome.ANSWERED for a in history)
    assert counters and max(counters.values()) <= cap
    assert sum(counters.values()) == 1000

    # Replay the calls in order with what each choice could see.
    per_minute: Counter[tuple[str, int]] = Counter()
    last: dict[str, str] = {}
    local_possible = local_given = 0
    shown: dict[str, list[str]] = defaultdict(list)
    for r in results:
        did, callee, minute = r.attempt.did, r.attempt.callee, int(r.attempt.at // 60)
        # No callee sees the same number twice in a row.
        assert did != last.get(callee), (callee, did)
        # No number goes over its cap in any minute.
        assert per_minute[did, minute] < cap, (did, minute)
        # A callee of a region the pool has gets a number of it whenever one is free.
        wanted = region(callee)
        local_free = [
            n
            for n in POOL
            if wanted is not None
            and region(n) == wanted
            and n != last.get(callee)
            and per_minute[n, minute] < cap
        ]
        if local_free:
            local_possible += 1
            assert did in local_free, (callee, did, local_free)
            local_given += 1
        per_minute[did, minute] += 1
        last[callee] = did
        shown[callee].append(did)

    # The same from the history alone, each callee's attempts in time order.
    by_callee: dict[str, list[Attempt]] = defaultdict(list)
    for a in history:
        by_callee[a.callee].append(a)
    for callee, attempts in by_callee.items():
        attempts.sort(key=lambda a: a.at)
        dids = [a.did for a in attempts]
        assert all(x != y for x, y in pairwise(dids)), callee
        assert dids == shown[callee]
    assert {callee: len(a) for callee, a in by_callee.items()} == dict.fromkeys(CALLEES, 100)

    # Local presence did happen, and mostly: Moscow callees got Moscow numbers most of the time.
    moscow_calls = [r for r in results if region(r.attempt.callee) == "Moscow"]
    moscow_shown = sum(region(r.attempt.did) == "Moscow" for r in moscow_calls)
    assert local_given == local_possible > 0
    assert moscow_shown > len(moscow_calls) // 2
    # The St Petersburg callee alternates: its one local number, then another (never the
    # same twice in a row), and so on while the local number has room under its cap.
    spb = shown["78121110005"]
    assert len(spb) // 3 <= spb.count("78120000001") <= len(spb) // 2
    # Numbers of no callee's region still carry the mobile callees' load.
    assert all(Counter(r.attempt.did for r in results)[n] > 0 for n in POOL)


async def test_pool_calls_in_parallel_keep_the_cap(settings: Settings) -> None:
    # Ten callees dialed at once, over and over: the cap holds under races between the
    # caller-ID read and the attempt's write (the write re-checks the cap atomically).
    cap = 3
    clock = Clock(start=1_800_000_000.0)
    results: list[DialResult] = []

    async def dial_again_and_again(callee: str, d: Dialer) -> None:
        while len([r for r in results if r.attempt.callee == callee]) < 15:
            minute = int(clock.now // 60)
            try:
                results.append(await d.originator.dial("pool-promo", callee))
            except PoolAtCapacity:
                if int(clock.now // 60) == minute:  # the first to find the minute full
                    clock.next_minute()

    fake = FakeAMI(time_scale=0.0005)
    async with dialer(settings, fake, clock=clock, pool_calls_per_minute=cap) as d:
        await asyncio.gather(*(dial_again_and_again(c, d) for c in CALLEES))
        counters = [
            int(await d.history.redis.get(d.settings.redis.key_prefix + key))
            for key in await d.keys("cpm:*")
        ]
    assert len(results) == 150 and fake.originate_count == 150
    assert max(counters) <= cap and sum(counters) == 150
    per_minute = Counter((r.attempt.did, int(r.attempt.at // 60)) for r in results)
    assert max(per_minute.values()) <= cap
    for callee in CALLEES:
        dids = [r.attempt.did for r in results if r.attempt.callee == callee]
        assert all(x != y for x, y in pairwise(dids)), callee


async def test_two_campaigns_dialing_one_callee_at_once_never_show_one_number_twice(
    settings: Settings,
) -> None:
    clock = Clock(start=1_800_000_000.0)
    async with dialer(settings, FakeAMI(), clock=clock) as d:
        for k in range(40):
            clock.next_minute()  # no cap in the way: only the previous number matters
            callee = f"7916222{k:04d}"
            first, second = await asyncio.gather(
                d.originator.prepare("pool-promo", callee),
                d.originator.prepare("acme-pool", callee),
            )
            assert first[0].did != second[0].did, (callee, first[0].did)
