"""Placing one outbound call: caller ID, attempt recorded first, Originate, outcome.

The attempt is written to the callback history (pending) BEFORE the Originate is sent, so a
callback seconds later is already recognised; if it cannot be written, no call is placed. An
Originate is sent once and never again. After a lost link its outcome still comes from its
events: Asterisk sends them to the new link too. Once the link is back, CoreShowChannels says
which calls placed on the old one are still there; one that is gone settles at once by what
did arrive (see ami/outcome.py). A call Asterisk tells nothing about for `outcome_timeout` is
looked up the same way; it settles as failed only once Asterisk no longer lists it (or cannot
be asked).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import structlog
from redis.exceptions import RedisError

from .. import phone
from ..agi import variables as var
from ..ami.client import AMIActionTimeout, AMIClient, AMIDisconnected, LinkState
from ..ami.outcome import from_failure, from_listing, from_originate_response, to_int
from ..ami.protocol import AMIError, Event
from ..config import DialplanSettings, OutboundSettings
from ..metrics import METRICS
from ..routing.callerid import (
    CallerId,
    CallerIdPlan,
    CallerIdRefused,
    PoolAtCapacity,
    callee_region,
    plan_caller_id,
)
from ..routing.model import Attempt, Campaign, CampaignState, Outcome
from ..store.history import CallbackHistory
from ..store.routing_data import RoutingSnapshot
from ..tasks import LoopErrors, cancel_and_wait

log = structlog.get_logger(__name__)

# After a failed OriginateResponse, or once Asterisk no longer lists a call, how long to wait
# for the events still on their way (the Hangup carries the cause).
HANGUP_GRACE = 1.0
# The dialplan's context that follows a decision (dialplan/extensions_zvonok.conf): an answered
# call enters it with the variables an AGI decision sets, and takes the same way.
ROUTE_CONTEXT = "zvonok-route"


class StoreUnavailable(Exception):
    """The attempt could not be recorded, so no call was placed (retry later)."""


class DialRefused(Exception):
    """This call may not be placed at all (a rule or bad input): no point retrying."""


class CampaignPaused(Exception):
    """The campaign is paused: no call now; its calls wait until it runs again."""


@dataclass(frozen=True)
class DialResult:
    attempt: Attempt
    caller_id: CallerId
    outcome: Outcome
    detail: str
    dialed: bool = True  # False: nothing reached Asterisk, and the attempt was taken back
    retry: bool = False  # not dialed because the AMI link was down: the same call may go later


class _Sent(Enum):
    YES = "yes"  # Asterisk has the Originate (or may have it: its reply was lost)
    NO = "no"  # the link was down: nothing left
    REFUSED = "refused"  # Asterisk answered Error: nothing dialed


@dataclass
class _Tracker:
    """What Asterisk has said so far about one Originate."""

    id: str  # the attempt's id: the call's ChannelId, so its Uniqueid in every event
    future: asyncio.Future[tuple[Outcome, str]]
    link: int = 0  # the AMI link it went out on (AMIClient.links then; 0: another dialer's)
    reason: int | None = None
    responded: bool = False
    cause: int | None = None
    gone: bool = False  # Asterisk no longer lists it
    grace: asyncio.TimerHandle | None = field(default=None, repr=False)

    def settle(self, outcome: Outcome, detail: str) -> None:
        if self.grace is not None:
            self.grace.cancel()
        if not self.future.done():
            self.future.set_result((outcome, detail))


class Originator:
    # The events it reads: an AMIClient of its own may skip every other (event_names).
    EVENTS = ("OriginateResponse", "Hangup")

    def __init__(
        self,
        ami: AMIClient,
        history: CallbackHistory,
        routing: Callable[[], RoutingSnapshot],
        settings: OutboundSettings,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        region: str = phone.DEFAULT_REGION,
        rested: Callable[[], frozenset[str]] = frozenset,
        scenario_context: str = DialplanSettings.outbound_scenario_context,
    ) -> None:
        self.ami = ami
        self.history = history
        self.routing = routing
        self.settings = settings
        self.rng = rng or random.Random()
        self.clock = clock
        self.region = region  # of callee numbers written without a country code
        self.rested = rested  # the pool numbers resting now (outbound/number_health.py)
        self.scenario_context = scenario_context  # where a campaign's scenario runs
        self._trackers: dict[str, _Tracker] = {}
        self._shown_before: dict[str, str | None] = {}  # attempt id -> callee's previous number
        self._pump: asyncio.Task[None] | None = None
        self._reconciling: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Originator:
        self._pump = asyncio.create_task(self._read_events(), name="originator-events")
        self.ami.add_state_listener(self._on_link_state)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.ami.remove_state_listener(self._on_link_state)
        await cancel_and_wait(self._pump, *self._reconciling)
        for tracker in self._trackers.values():
            tracker.settle(Outcome.FAILED, "dialer stopped before the outcome arrived")

    async def prepare(
        self,
        campaign_id: str,
        callee_raw: str,
        *,
        attempt_id: str | None = None,
        via: str | None = None,
    ) -> tuple[Attempt, CallerId]:
        """Choose the caller ID and record the attempt (pending), in one step in the store.
        Raises DialRefused, CampaignPaused or PoolAtCapacity (wait a little), or
        StoreUnavailable; nothing is dialed here. `via`: the campaign dials each callee once,
        this call is its call to this callee, through that host (AlreadyDialed if it has one)."""
        callee = phone.normalize(callee_raw, self.region)
        if callee is None:
            raise DialRefused(f"{callee_raw!r} is not a phone number")
        campaign, plan = self._plan(campaign_id, callee, callee_region)
        if campaign.state is CampaignState.PAUSED:
            raise CampaignPaused(f"campaign {campaign.id} is paused")
        cap = self.settings.pool_calls_per_minute if plan.from_pool else None
        template = Attempt(
            id=attempt_id or uuid.uuid4().hex,
            campaign=campaign.id,
            account=campaign.account,
            did="",
            callee=callee,
            at=self.clock(),
        )
        try:
            attempt, previous = await self.history.record_dial(
                template, plan.candidates, avoid_previous=plan.avoids_previous, cap=cap, via=via
            )
        except (RedisError, OSError) as exc:
            METRICS.store_error("record_attempt")
            raise StoreUnavailable(f"callback history unavailable: {exc}") from exc
        if attempt is None:
            raise PoolAtCapacity(f"every usable pool number is at {cap} calls/min")
        self._shown_before[attempt.id] = previous
        return attempt, plan.caller_id(attempt.did)

    def check_campaign(self, campaign_id: str) -> None:
        """Raise DialRefused if no call of this campaign may be placed (before dialing any);
        a paused campaign may be run: its calls wait for it."""
        self._plan(campaign_id, "", lambda _: None)

    def _plan(
        self, campaign_id: str, callee: str, region_of: Callable[[str], str | None]
    ) -> tuple[Campaign, CallerIdPlan]:
        """The campaign and the numbers a call to `callee` may show; DialRefused if none."""
        snapshot = self.routing()
        campaign = snapshot.campaigns.get(campaign_id)
        if campaign is None:
            raise DialRefused(f"no campaign {campaign_id!r}")
        account = snapshot.accounts.get(campaign.account)
        # A pool campaign looks only at the service numbers: not at every number there is.
        numbers = snapshot.numbers if campaign.caller_id else snapshot.service_pool
        try:
            plan = plan_caller_id(
                campaign, account, numbers, callee, self.rng, region_of, self.rested()
            )
        except CallerIdRefused as exc:
            raise DialRefused(str(exc)) from exc
        return campaign, plan

    async def dial(self, campaign_id: str, callee_raw: str) -> DialResult:
        """Place one call and wait for its outcome (which is also written to the history)."""
        attempt, caller_id = await self.prepare(campaign_id, callee_raw)
        return await self.place(attempt, caller_id)

    async def place(self, attempt: Attempt, caller_id: CallerId) -> DialResult:
        """Originate a prepared attempt, wait for its outcome, write it to the history. A call
        that never reached Asterisk is taken back out of the history."""
        previous = self._shown_before.pop(attempt.id, None)
        outcome, detail, sent = await self._originate(attempt)
        if sent is not _Sent.YES:
            await self._undial(attempt, previous)
            log.warning(
                "call not placed",
                campaign=attempt.campaign,
                callee=attempt.callee,
                attempt=attempt.id,
                detail=detail,
            )
            return DialResult(
                attempt, caller_id, outcome, detail, dialed=False, retry=sent is _Sent.NO
            )
        await self._settle(attempt, outcome)
        METRICS.originate(outcome.value)
        log.info(
            "call placed",
            campaign=attempt.campaign,
            callee=attempt.callee,
            caller_id=attempt.did,
            attempt=attempt.id,
            outcome=outcome.value,
            detail=detail,
        )
        return DialResult(attempt, caller_id, outcome, detail)

    async def _originate(self, attempt: Attempt) -> tuple[Outcome, str, _Sent]:
        tracker = self._track(attempt.id)  # before sending: events may beat the response
        try:
            try:
                tracker.link = self.ami.links
                response = await self.ami.send_action("Originate", self._fields(attempt))
            except AMIDisconnected as exc:
                if not exc.sent:
                    return Outcome.FAILED, "AMI link down: not dialed", _Sent.NO
                log.warning("originate reply lost; waiting for events", attempt=attempt.id)
            except AMIActionTimeout:
                log.warning("originate not answered; waiting for events", attempt=attempt.id)
            else:
                if not response.ok:
                    return Outcome.FAILED, f"Originate refused: {response.message}", _Sent.REFUSED
            outcome, detail = await self._outcome(tracker)
            return outcome, detail, _Sent.YES
        finally:
            self._untrack(tracker)

    async def adopt(self, attempt: Attempt) -> tuple[Outcome, str]:
        """Follow a call that another dialer placed and follows no more (it stopped): while
        Asterisk lists it, its events settle it; one no longer listed settles at once. The
        outcome is written to the history. Raises AMIError when Asterisk cannot be asked."""
        tracker = self._track(attempt.id)
        try:
            self._apply_listing(tracker, await self.channels())
            outcome, detail = await self._outcome(tracker)
        finally:
            self._untrack(tracker)
        await self._settle(attempt, outcome)
        log.info("adopted call settled", attempt=attempt.id, outcome=outcome.value, detail=detail)
        return outcome, detail

    def _track(self, attempt_id: str) -> _Tracker:
        tracker = _Tracker(attempt_id, asyncio.get_running_loop().create_future())
        self._trackers[attempt_id] = tracker
        return tracker

    def _untrack(self, tracker: _Tracker) -> None:
        tracker.settle(Outcome.FAILED, "abandoned")
        del self._trackers[tracker.id]

    async def _outcome(self, tracker: _Tracker) -> tuple[Outcome, str]:
        """The call's outcome from its events. After `outcome_timeout` with no word, Asterisk
        is asked whether it still has the call: then it is waited for again."""
        while not tracker.future.done():
            await asyncio.wait([tracker.future], timeout=self.settings.outcome_timeout)
            if tracker.future.done():
                break
            try:
                listing = await self.channels()
            except AMIError:
                tracker.settle(Outcome.FAILED, "no outcome from Asterisk in time")
                break
            self._apply_listing(tracker, listing)
            if tracker.id in listing:
                log.info("no outcome yet, Asterisk still has the call", attempt=tracker.id)
        return tracker.future.result()

    async def channels(self) -> dict[str, int | None]:
        """The channels Asterisk has now (CoreShowChannels): Uniqueid -> ChannelState."""
        response, events = await self.ami.send_action_list("CoreShowChannels")
        if not response.ok:
            raise AMIError(f"CoreShowChannels refused: {response.message}")
        return {
            event.get("Uniqueid") or "": to_int(event.get("ChannelState"))
            for event in events
            if event.name == "CoreShowChannel"
        }

    def _on_link_state(self, state: LinkState) -> None:
        if state is LinkState.CONNECTED and self.ami.links > 1:
            task = asyncio.create_task(self._reconcile(self.ami.links), name="originator-reconcile")
            self._reconciling.add(task)
            task.add_done_callback(self._reconciling.discard)

    async def _reconcile(self, link: int) -> None:
        """After a reconnect: ask Asterisk about the calls placed on an earlier link."""
        earlier = [t for t in self._trackers.values() if t.link < link and not t.future.done()]
        if not earlier:
            return
        try:
            listing = await self.channels()
        except AMIError as exc:  # they are asked about again at their outcome_timeout
            log.warning(
                "calls not reconciled after the reconnect", calls=len(earlier), error=str(exc)
            )
            return
        for tracker in earlier:
            self._apply_listing(tracker, listing)
        gone = sum(tracker.gone for tracker in earlier)
        log.info("calls reconciled after the reconnect", listed=len(earlier) - gone, gone=gone)

    def _apply_listing(self, tracker: _Tracker, listing: dict[str, int | None]) -> None:
        """What CoreShowChannels says of a call: answered (Up), still there (wait), or over."""
        if tracker.future.done():
            return
        if tracker.id in listing:
            if from_listing(listing[tracker.id]) is not None:
                tracker.settle(Outcome.ANSWERED, "answered (its channel is Up)")
            return
        tracker.gone = True
        if tracker.cause is not None:
            self._settle_failure(tracker)
        elif tracker.grace is None:  # events may still be on their way: a moment for them
            tracker.grace = asyncio.get_running_loop().call_later(
                HANGUP_GRACE, self._settle_failure, tracker
            )

    def _fields(self, attempt: Attempt) -> list[tuple[str, str]]:
        """The Originate. An answered call enters zvonok-route as a decided callback does:
        the campaign's own context if the dialplan has one, else its scenario (as it is now:
        a scenario changed since the attempt was queued applies)."""
        s = self.settings
        campaign = self.routing().campaigns.get(attempt.campaign)
        scenario = campaign.scenario if campaign is not None else None
        return [
            ("Channel", s.channel.format(callee=attempt.callee)),
            ("Context", ROUTE_CONTEXT),
            ("Exten", "s"),
            ("Priority", "1"),
            ("CallerID", f"<{attempt.did}>"),
            ("Timeout", str(int(s.ring_timeout * 1000))),
            ("Async", "true"),
            ("ChannelId", attempt.id),  # the Uniqueid of every event about this call
            ("Variable", f"ZV_CAMPAIGN={attempt.campaign}"),
            ("Variable", f"ZV_ACCOUNT={attempt.account}"),
            ("Variable", f"ZV_CALLEE={attempt.callee}"),
            ("Variable", f"ZV_ATTEMPT={attempt.id}"),
            ("Variable", f"{var.ROUTE}=outbound"),
            ("Variable", f"{var.TARGET_CONTEXT}={s.context.format(campaign=attempt.campaign)}"),
            ("Variable", f"{var.TARGET_EXTEN}=s"),
            *(
                ("Variable", f"{name}={value}")
                for name, value in var.scenario_values(scenario, self.scenario_context)
            ),
            ("Variable", f"{var.DECIDED}=1"),
        ]

    async def _undial(self, attempt: Attempt, previous: str | None) -> None:
        try:
            await self.history.undial(attempt, previous)
        except (RedisError, OSError) as exc:
            # It stays as a failed attempt: a callback to it still finds its campaign.
            await self._settle(attempt, Outcome.FAILED, placed=False)
            log.error("attempt not taken back", attempt=attempt.id, error=str(exc))

    async def _settle(self, attempt: Attempt, outcome: Outcome, *, placed: bool = True) -> None:
        for delay in (0, 0.5, 2.0):
            await asyncio.sleep(delay)
            try:
                await self.history.settle(attempt, outcome, placed=placed)
                return
            except (RedisError, OSError) as exc:
                error = exc
        # The attempt stays pending: a callback is still recognised, as if unanswered.
        log.error("attempt outcome not recorded", attempt=attempt.id, error=str(error))

    async def _read_events(self) -> None:
        errors = LoopErrors("originator-events", expected=())
        async for event in self.ami.events():
            try:
                self._on_event(event)
            except Exception as exc:
                errors.failed(exc, ami_event=event.name)
                # Its call's outcome is unknown now: say so at once, not after the timeout.
                tracker = self._trackers.get(event.get("Uniqueid") or "")
                if tracker is not None:
                    tracker.settle(Outcome.FAILED, f"handling {event.name} failed: {exc!r}")
            else:
                errors.succeeded()

    def _on_event(self, event: Event) -> None:
        tracker = self._trackers.get(event.get("Uniqueid") or "")
        if tracker is None:
            return
        if event.name == "OriginateResponse":
            tracker.responded = True
            tracker.reason = to_int(event.get("Reason"))
            answered = from_originate_response(event.get("Response") == "Success", tracker.reason)
            if answered is not None:
                tracker.settle(answered, "answered")
            elif tracker.cause is not None:
                self._settle_failure(tracker)
            else:
                tracker.grace = asyncio.get_running_loop().call_later(
                    HANGUP_GRACE, self._settle_failure, tracker
                )
        elif event.name == "Hangup":
            tracker.cause = to_int(event.get("Cause"))
            if tracker.responded or tracker.gone:
                self._settle_failure(tracker)

    @staticmethod
    def _settle_failure(tracker: _Tracker) -> None:
        outcome = from_failure(tracker.reason, tracker.cause)
        cause = "no Hangup" if tracker.cause is None else f"Hangup Cause {tracker.cause}"
        if tracker.responded:
            tracker.settle(outcome, f"OriginateResponse Reason {tracker.reason}, {cause}")
        elif tracker.cause is not None:
            tracker.settle(outcome, f"gone from Asterisk, no OriginateResponse, {cause}")
        else:
            tracker.settle(outcome, "gone from Asterisk without an outcome event")
