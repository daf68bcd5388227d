"""Placing one outbound call: caller ID, attempt recorded first, Originate, outcome.

The attempt is written to the callback history (pending) BEFORE the Originate is sent, so a
callback seconds later is already recognised; if it cannot be written, no call is placed. An
Originate is sent once and never again: after a lost link its outcome comes from the events
if they arrive, else it settles as failed after `outcome_timeout`.
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
from ..ami.client import AMIActionTimeout, AMIClient, AMIDisconnected
from ..ami.outcome import from_failure, from_originate_response, to_int
from ..ami.protocol import Event
from ..config import OutboundSettings
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

# After a failed OriginateResponse, how long to wait for the Hangup that carries the cause.
HANGUP_GRACE = 1.0
# Candidate numbers offered to the store per round trip: the first usable one is nearly
# always among them, and a big pool does not make every call's request big.
CANDIDATES_PER_TRY = 8


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

    future: asyncio.Future[tuple[Outcome, str]]
    reason: int | None = None
    responded: bool = False
    cause: int | None = None
    grace: asyncio.TimerHandle | None = field(default=None, repr=False)

    def settle(self, outcome: Outcome, detail: str) -> None:
        if self.grace is not None:
            self.grace.cancel()
        if not self.future.done():
            self.future.set_result((outcome, detail))


class Originator:
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
    ) -> None:
        self.ami = ami
        self.history = history
        self.routing = routing
        self.settings = settings
        self.rng = rng or random.Random()
        self.clock = clock
        self.region = region  # of callee numbers written without a country code
        self._trackers: dict[str, _Tracker] = {}
        self._shown_before: dict[str, str | None] = {}  # attempt id -> callee's previous number
        self._pump: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Originator:
        self._pump = asyncio.create_task(self._read_events(), name="originator-events")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await cancel_and_wait(self._pump)
        for tracker in self._trackers.values():
            tracker.settle(Outcome.FAILED, "dialer stopped before the outcome arrived")

    async def prepare(self, campaign_id: str, callee_raw: str) -> tuple[Attempt, CallerId]:
        """Choose the caller ID and record the attempt (pending), in one step in the store.
        Raises DialRefused, CampaignPaused or PoolAtCapacity (wait a little), or
        StoreUnavailable; nothing is dialed here."""
        callee = phone.normalize(callee_raw, self.region)
        if callee is None:
            raise DialRefused(f"{callee_raw!r} is not a phone number")
        campaign, plan = self._plan(campaign_id, callee, callee_region)
        if campaign.state is CampaignState.PAUSED:
            raise CampaignPaused(f"campaign {campaign.id} is paused")
        cap = self.settings.pool_calls_per_minute if plan.from_pool else None
        template = Attempt(
            id=uuid.uuid4().hex,
            campaign=campaign.id,
            account=campaign.account,
            did="",
            callee=callee,
            at=self.clock(),
        )
        try:
            for start in range(0, len(plan.candidates), CANDIDATES_PER_TRY):
                attempt, previous = await self.history.record_dial(
                    template,
                    plan.candidates[start : start + CANDIDATES_PER_TRY],
                    avoid_previous=plan.avoids_previous,
                    cap=cap,
                )
                if attempt is not None:
                    self._shown_before[attempt.id] = previous
                    return attempt, plan.caller_id(attempt.did)
        except (RedisError, OSError) as exc:
            METRICS.store_error("record_attempt")
            raise StoreUnavailable(f"callback history unavailable: {exc}") from exc
        raise PoolAtCapacity(f"every usable pool number is at {cap} calls/min")

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
            plan = plan_caller_id(campaign, account, numbers, callee, self.rng, region_of=region_of)
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
        tracker = _Tracker(asyncio.get_running_loop().create_future())
        self._trackers[attempt.id] = tracker  # before sending: events may beat the response
        try:
            try:
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
            try:
                async with asyncio.timeout(self.settings.outcome_timeout):
                    outcome, detail = await tracker.future
                    return outcome, detail, _Sent.YES
            except TimeoutError:
                return Outcome.FAILED, "no outcome from Asterisk in time", _Sent.YES
        finally:
            tracker.settle(Outcome.FAILED, "abandoned")
            del self._trackers[attempt.id]

    def _fields(self, attempt: Attempt) -> list[tuple[str, str]]:
        s = self.settings
        return [
            ("Channel", s.channel.format(callee=attempt.callee)),
            ("Context", s.context.format(campaign=attempt.campaign)),
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
        ]

    async def _undial(self, attempt: Attempt, previous: str | None) -> None:
        try:
            await self.history.undial(attempt, previous)
        except (RedisError, OSError) as exc:
            # It stays as a failed attempt: a callback to it still finds its campaign.
            await self._settle(attempt, Outcome.FAILED)
            log.error("attempt not taken back", attempt=attempt.id, error=str(exc))

    async def _settle(self, attempt: Attempt, outcome: Outcome) -> None:
        for delay in (0, 0.5, 2.0):
            await asyncio.sleep(delay)
            try:
                await self.history.settle(attempt.id, outcome)
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
            if tracker.responded:
                self._settle_failure(tracker)

    @staticmethod
    def _settle_failure(tracker: _Tracker) -> None:
        outcome = from_failure(tracker.reason, tracker.cause)
        cause = "no Hangup" if tracker.cause is None else f"Hangup Cause {tracker.cause}"
        tracker.settle(outcome, f"OriginateResponse Reason {tracker.reason}, {cause}")
