"""Value types of the routing core: what the decision reads and what it returns.

Plain frozen dataclasses, no I/O. Times are Unix seconds (float); numbers are E.164 digits
without '+'. See routing-rules.md for the meaning of every field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# Campaign ids end up in Asterisk context names (at most 79 characters): keep them tame.
CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")


class Pool(StrEnum):
    SERVICE = "service"
    RESERVABLE = "reservable"


class NumberStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class CallbackRule(StrEnum):
    FORCE_YES = "force_yes"
    AS_CAMPAIGN = "as_campaign"
    FORCE_NO = "force_no"


class CampaignKind(StrEnum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


class CampaignState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"


class Outcome(StrEnum):
    PENDING = "pending"
    ANSWERED = "answered"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    FAILED = "failed"
    CONGESTION = "congestion"


class RouteKind(StrEnum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"
    FALLBACK = "fallback"


class Fallback(StrEnum):
    UNKNOWN_NUMBER = "unknown_number"
    NO_INBOUND_CAMPAIGN = "no_inbound_campaign"
    SERVICE_NUMBER = "service_number"
    ENGINE_ERROR = "engine_error"


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    verified: bool = False
    name: str = ""


@dataclass(frozen=True, slots=True)
class Number:
    """A subscriber number as routing sees it."""

    did: str
    pool: Pool
    status: NumberStatus = NumberStatus.ACTIVE
    owner: str | None = None  # account id; None for service numbers and unreserved stock
    callback_rule: CallbackRule = CallbackRule.AS_CAMPAIGN
    inbound_campaign: str | None = None  # bound inbound campaign id (reserved numbers only)

    @property
    def is_service(self) -> bool:
        return self.pool is Pool.SERVICE

    @property
    def is_reserved(self) -> bool:
        return self.pool is Pool.RESERVABLE and self.owner is not None


@dataclass(frozen=True, slots=True)
class Operators:
    """Who takes a scenario's calls: a queue, or PJSIP endpoints rung at once."""

    queue: str | None = None
    endpoints: tuple[str, ...] = ()
    ring_timeout: int = 20  # seconds they ring (a queue: the caller waits) before "no answer"
    digit: str | None = None  # outbound only: what the subscriber presses to reach them


@dataclass(frozen=True, slots=True)
class Scenario:
    """What a campaign's calls do when no dialplan context of its own says otherwise
    (routing.scenario checks every name; docs/routing.md, "Scenarios")."""

    play: str | None = None  # the recording the call hears first
    operators: Operators | None = None
    no_answer_play: str | None = None  # the recording heard when no operator answers


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    account: str
    kind: CampaignKind
    accept_inbound: bool = False  # outbound only: the "Accept inbound" fine setting
    state: CampaignState = CampaignState.RUNNING
    caller_id: str | None = None  # outbound only: a reserved number's DID; None = service pool
    name: str = ""  # what people call it (the id names its Asterisk context)
    scenario: Scenario | None = None  # None: only a context of its own routes its calls


@dataclass(frozen=True, slots=True)
class Attempt:
    """One outbound call from `did` to `callee`, as kept in the callback history."""

    id: str
    campaign: str
    account: str
    did: str
    callee: str
    at: float
    outcome: Outcome = Outcome.PENDING
    callbacks: int = 0  # callbacks already routed back into the campaign


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    campaign: str | None = None  # set for OUTBOUND and INBOUND
    fallback: Fallback | None = None  # set for FALLBACK
    attempt: str | None = None  # the attempt whose callback this is (OUTBOUND only)
    scenario: Scenario | None = None  # the campaign's, if it has one

    @classmethod
    def outbound(cls, campaign: str, attempt: str, scenario: Scenario | None = None) -> Route:
        return cls(RouteKind.OUTBOUND, campaign=campaign, attempt=attempt, scenario=scenario)

    @classmethod
    def inbound(cls, campaign: str, scenario: Scenario | None = None) -> Route:
        return cls(RouteKind.INBOUND, campaign=campaign, scenario=scenario)

    @classmethod
    def to_fallback(cls, fallback: Fallback) -> Route:
        return cls(RouteKind.FALLBACK, fallback=fallback)


@dataclass(frozen=True, slots=True)
class Decision:
    route: Route
    reason: str  # short, human-readable, safe to log and to hand to the dialplan
    code: str = ""  # the reason as a stable word, for metrics and log queries
