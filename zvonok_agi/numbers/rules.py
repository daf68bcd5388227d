"""The control plane's rules (routing-rules.md, "Reserving and binding" and "Caller ID for
outbound calls"), as pure functions of records: no I/O, no clock.

A rule that says no returns a `Refused` with a stable code and a sentence for a person; the
service raises it, the API turns it into a JSON error and the CLI into a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from .. import phone
from .. import text as free_text
from ..regions import RegionIndex
from ..routing import scenario as scenarios
from ..routing.model import (
    CAMPAIGN_ID,
    Account,
    CallbackRule,
    Campaign,
    CampaignKind,
    CampaignState,
    Number,
    NumberStatus,
    Pool,
    Scenario,
)

ACCOUNT_ID = CAMPAIGN_ID
E = TypeVar("E", bound=StrEnum)
MAX_REGION = 80
MAX_NAME = 120
MAX_NOTE = 500
MAX_SEARCH = 40
MAX_SUBJECT = 200  # of the audit log: a number, an id, "kind:region", "request:N"
MAX_ROW_ID = 2**63 - 1  # SQLite's largest integer: beyond it sqlite3 raises OverflowError
MAX_CALLEES = 1000  # per request: a list fits the default admin.max_body
MAX_CPS = 1000.0
MAX_CONCURRENCY = 10_000


class Kind(StrEnum):
    MOBILE = "mobile"
    LANDLINE = "landline"


HOME_COUNTRY, HOME_CALLING_CODE = "RU", 7
# The numbering plan's types of the numbers customers are offered, and what we call them.
PLAN_KINDS = {"mobile": Kind.MOBILE, "fixed_line_or_mobile": Kind.MOBILE,
              "fixed_line": Kind.LANDLINE}


class Choice(StrEnum):
    """The three entries of the seed's "Add" menu."""

    MOBILE = "mobile"
    LANDLINE_POPULAR = "landline_popular"
    LANDLINE = "landline"

    @property
    def kind(self) -> Kind:
        return Kind.MOBILE if self is Choice.MOBILE else Kind.LANDLINE


class Refused(Exception):
    """A rule said no. `code` is stable (clients branch on it), `message` is for people;
    `choices`, when there are some, are values the person may have meant."""

    def __init__(self, code: str, message: str, choices: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.choices = tuple(choices)


@dataclass(frozen=True, slots=True)
class NumberRecord:
    """A subscriber number as the control plane keeps it (routing needs only `routing()`)."""

    did: str
    kind: Kind
    region: str
    pool: Pool
    status: NumberStatus = NumberStatus.ACTIVE
    owner: str | None = None
    callback_rule: CallbackRule = CallbackRule.AS_CAMPAIGN
    inbound_campaign: str | None = None
    reserved_at: float | None = None

    @property
    def is_reserved(self) -> bool:
        return self.pool is Pool.RESERVABLE and self.owner is not None

    @property
    def is_available(self) -> bool:
        return self.pool is Pool.RESERVABLE and self.owner is None and self.active

    @property
    def active(self) -> bool:
        return self.status is NumberStatus.ACTIVE

    def routing(self) -> Number:
        return Number(
            did=self.did,
            pool=self.pool,
            status=self.status,
            owner=self.owner,
            callback_rule=self.callback_rule,
            inbound_campaign=self.inbound_campaign,
        )


@dataclass(frozen=True, slots=True)
class RegionCount:
    region: str
    available: int


@dataclass(frozen=True, slots=True)
class Request:
    """A customer wants a number where none is available (topic `numbers`), or wrote to
    support (`support`: none of the numbers offered suits them, or anything else); sales or
    support call back, then close it with a note the customer sees."""

    id: int
    account: str
    kind: Kind | None  # the numbers asked for; a support request may name none
    region: str | None
    at: float
    status: str = "open"
    closed_at: float | None = None
    closed_by: str | None = None
    note: str | None = None  # the closing note
    topic: str = "numbers"
    comment: str | None = None  # what the customer wrote (support)
    contact: str | None = None  # the phone to call back on (support), E.164 digits


# input at the edge


def did_of(raw: object) -> str:
    """A phone number as people write it -> E.164 digits, or Refused("bad_number")."""
    did = phone.normalize(raw) if isinstance(raw, str) else None
    if did is None:
        raise Refused("bad_number", f"{raw!r} is not a phone number")
    return did


def ident(raw: object, what: str) -> str:
    if not isinstance(raw, str) or not ACCOUNT_ID.fullmatch(raw):
        raise Refused(
            "bad_input", f"{what} {raw!r}: letters, digits, '-' and '_' only, 1 to 48 characters"
        )
    return raw


def text(raw: object, what: str, limit: int, *, required: bool = False) -> str:
    """Free text as people type it, stripped; refused with invisible or control characters
    (`zvonok_agi.text`), over `limit` characters, or (`required`) blank."""
    if not isinstance(raw, str) or len(raw) > limit:
        raise Refused("bad_input", f"{what} must be text of at most {limit} characters")
    refused = free_text.refused_character(raw)
    if refused:
        raise Refused("bad_input", f"{what} holds {refused}")
    if required and not raw.strip():
        raise Refused("bad_input", f"{what} must not be empty")
    return raw.strip()


def request_id(raw: object) -> int:
    """A request's id, as a number or as the digits of a path or a command line."""
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 19:
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_ROW_ID:
        raise Refused("bad_input", f"a request id is a whole number, not {raw!r}")
    return raw


def enum_value(cls: type[E], raw: object, what: str) -> E:
    try:
        return cls(raw)
    except ValueError:
        allowed = ", ".join(item.value for item in cls)
        raise Refused("bad_input", f"{what} must be one of {allowed}, not {raw!r}") from None


def classify(did: str, kind: Kind | None = None, region: str | None = None) -> tuple[Kind, str]:
    """Kind and region of a number we keep: a Russian mobile or city (fixed-line) number, the
    kind and region from the numbering plan unless an operator says otherwise. Russian mobile
    ranges belong to no region: they get the country's name. Toll-free, premium-rate and other
    non-geographic numbers, and foreign ones, are refused whatever the operator says: customers
    would be offered them as city numbers. A Russian-looking range the plan does not know yet
    is kept when the operator gives its kind and region."""
    plan = phone.range_plan(did)  # the range's: one parse per range for a big import
    refusal: str | None = None
    if plan.type == "unknown" and plan.calling_code == HOME_CALLING_CODE:
        if kind is None or not region:
            refusal = "the numbering plan does not know {number}: give its kind and region"
    elif plan.country != HOME_COUNTRY:
        refusal = f"{{number}} is a number of {plan.country_name}: we keep Russian numbers only"
    elif plan.type not in PLAN_KINDS:
        refusal = (
            f"{{number}} is a {plan.type.replace('_', ' ')} number: we keep mobile and "
            "city numbers only"
        )
    else:
        kind = kind or PLAN_KINDS[plan.type]
        region = region or plan.region or (plan.country_name if kind is Kind.MOBILE else None)
        if not region:
            refusal = "the numbering plan names no city for {number}: give its region"
    if refusal:
        raise Refused("unsupported_number", refusal.format(number=phone.plan(did).written))
    assert kind is not None and region is not None
    return kind, region


def search_needles(query: str) -> list[str]:
    """What a search matches inside the digits: the digits typed, and the whole number when the
    query is one (so that `8 916 123-45-67` finds 79161234567)."""
    digits = re.sub(r"\D", "", query)
    needles = [digits] if digits else []
    full = phone.normalize(query)
    if full and full not in needles:
        needles.append(full)
    return needles


# reservation


def region_named(typed: str, index: RegionIndex) -> str:
    """The region a person means by `typed` ("moscow", "Москва", "Moskva": Moscow); an
    ambiguous or unknown name is refused with the regions it may mean."""
    found = index.find(typed)
    if len(found) == 1:
        return found[0]
    if found:
        raise Refused("ambiguous_region",
                      f"{typed!r} may be {' or '.join(found)}: choose one", found)
    close = index.close(typed)
    hint = f": did you mean {' or '.join(close)}?" if close else ""
    raise Refused("unknown_region", f"we know no region called {typed!r}{hint}", close)


def region_counts(
    choice: Choice, available: Mapping[tuple[Kind, str], int], popular: Iterable[str]
) -> list[RegionCount]:
    """The regions offered for a choice with their count of available numbers. Popular cities
    are all listed (in their configured order), an empty one too: picking it files a request."""
    kind = choice.kind
    if choice is Choice.LANDLINE_POPULAR:
        return [RegionCount(city, available.get((kind, city), 0)) for city in popular]
    return sorted(
        (RegionCount(region, n) for (k, region), n in available.items() if k is kind and n > 0),
        key=lambda rc: rc.region,
    )


def account_refusal(account: Account | None) -> Refused | None:
    """Only a verified account may reserve (and so look for numbers to reserve)."""
    if account is None:
        return Refused("unknown_account", "no such account")
    if not account.verified:
        return Refused(
            "not_verified",
            f"account {account.id} is not verified: it dials from the service pool until it "
            "passes identification",
        )
    return None


def reserve_refusal(account: Account | None, number: NumberRecord | None) -> Refused | None:
    refusal = account_refusal(account)
    if refusal is not None or account is None:
        return refusal
    if number is None:
        return Refused("unknown_number", "no such number")
    if number.pool is Pool.SERVICE:
        return Refused("not_reservable", f"{number.did} is a service number: it is shared")
    if number.owner == account.id:
        return Refused("already_yours", f"{number.did} is already reserved by {account.id}")
    if number.owner is not None:
        return Refused("already_taken", f"{number.did} is already taken: choose another number")
    if not number.active:
        return Refused("number_disabled", f"{number.did} is disabled")
    return None


def requests_refusal(account: str, open_requests: int, cap: int) -> Refused | None:
    """An account waits for sales to call back about its open requests before filing more."""
    if open_requests >= cap:
        return Refused(
            "too_many_requests",
            f"account {account} already has {open_requests} open requests for numbers: our "
            "sales team will call you back about those first",
        )
    return None


# what an account may do with its numbers


def ownership_refusal(number: NumberRecord, as_account: str | None) -> Refused | None:
    """Acting as an account, only its own numbers may be changed (an operator acts as none)."""
    if as_account is not None and number.owner != as_account:
        return Refused("not_owner", f"{number.did} does not belong to account {as_account}")
    return None


def reserved_refusal(number: NumberRecord | None, as_account: str | None) -> Refused | None:
    """Bindings, rules and release exist only for reserved numbers."""
    if number is None:
        return Refused("unknown_number", "no such number")
    if number.pool is Pool.SERVICE:
        return Refused(
            "service_number",
            f"{number.did} is a service number: it has no owner, no inbound campaign, no rule",
        )
    if number.owner is None:
        return Refused("not_reserved", f"{number.did} is not reserved by any account")
    return ownership_refusal(number, as_account)


def binding_refusal(
    number: NumberRecord | None, campaign: Campaign | None, as_account: str | None
) -> Refused | None:
    """An inbound campaign goes only on an active reserved number of the campaign's account."""
    refusal = reserved_refusal(number, as_account)
    if refusal is not None or number is None:
        return refusal
    if not number.active:
        return Refused("number_disabled", f"{number.did} is disabled: enable it first")
    if campaign is None:
        return Refused("unknown_campaign", "no such campaign")
    if campaign.kind is not CampaignKind.INBOUND:
        return Refused("not_inbound", f"campaign {campaign.id} is not an inbound campaign")
    if campaign.account != number.owner:
        return Refused(
            "not_owner", f"campaign {campaign.id} and number {number.did} have different owners"
        )
    return None


def release_refusal(
    number: NumberRecord | None, as_account: str | None, callers: Iterable[Campaign]
) -> Refused | None:
    """Released, a number goes back to stock; campaigns still dialing from it must move first."""
    refusal = reserved_refusal(number, as_account)
    if refusal is not None:
        return refusal
    dialing = sorted(c.id for c in callers if c.state is not CampaignState.FINISHED)
    if dialing:
        return Refused(
            "number_in_use",
            f"campaigns {', '.join(dialing)} dial from this number: give them another caller "
            "ID first",
        )
    return None


# campaigns


def caller_id_refusal(
    account: Account, kind: CampaignKind, caller_id: str | None, number: NumberRecord | None
) -> Refused | None:
    """An outbound campaign dials from one of its account's active reserved numbers, or from
    the service pool (None); an unverified account only from the pool."""
    if caller_id is None:
        return None
    if kind is CampaignKind.INBOUND:
        return Refused("not_outbound", "an inbound campaign has no caller ID")
    if not account.verified:
        return Refused(
            "not_verified",
            f"account {account.id} is not verified: its campaigns dial from the service pool",
        )
    if number is None:
        return Refused("unknown_number", f"{caller_id} is not one of our numbers")
    if number.pool is Pool.SERVICE:
        return Refused(
            "service_number",
            f"{caller_id} is a service number: choose the service pool, not one of its numbers",
        )
    if number.owner != account.id:
        return Refused("not_owner", f"{caller_id} is not reserved by account {account.id}")
    if not number.active:
        return Refused("number_disabled", f"{caller_id} is disabled")
    return None


def scenario_of(document: object, kind: CampaignKind) -> Scenario | None:
    """The scenario a campaign of `kind` runs, from its document (docs/routing.md,
    "Scenarios"); None (null): none, the campaign's own dialplan context routes its calls."""
    if document is None:
        return None
    try:
        return scenarios.for_kind(scenarios.parse(document), kind)
    except scenarios.ScenarioError as exc:
        raise Refused("bad_scenario", exc.message) from None


def not_outbound(campaign: Campaign) -> Refused:
    return Refused(
        "not_outbound",
        f"campaign {campaign.id} is an inbound campaign: accept_inbound and the caller ID are "
        "settings of outbound campaigns",
    )


def dialing_refusal(campaign: Campaign) -> Refused | None:
    """Callees are queued for outbound campaigns that may still dial (a paused one may)."""
    if campaign.kind is CampaignKind.INBOUND:
        return Refused("not_outbound", f"campaign {campaign.id} is inbound: it places no calls")
    if campaign.state is CampaignState.FINISHED:
        return Refused("campaign_finished", f"campaign {campaign.id} is finished: it calls no more")
    return None


def callee_list(raw: object) -> list[str]:
    """A request's callees: 1 to MAX_CALLEES texts, each as long as a written phone number at
    most. Which are phone numbers is the dialer's to say (the others are refused, one by one)."""
    if (
        not isinstance(raw, list)
        or not 1 <= len(raw) <= MAX_CALLEES
        or not all(isinstance(item, str) and len(item) <= phone.MAX_RAW_LENGTH for item in raw)
    ):
        raise Refused(
            "bad_input",
            f"callees must be a list of 1 to {MAX_CALLEES} phone numbers (text of at most "
            f"{phone.MAX_RAW_LENGTH} characters); send a longer list in several requests",
        )
    return raw


def calls_per_second(raw: object) -> float | None:
    """A campaign's calls started per second: more than 0, at most MAX_CPS; None: unchanged."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= MAX_CPS:
        raise Refused("bad_input", f"cps must be a number above 0 and at most {MAX_CPS:g}")
    return float(raw)


def concurrency(raw: object) -> int | None:
    """A campaign's calls at once: 1 to MAX_CONCURRENCY; None: unchanged."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_CONCURRENCY:
        raise Refused("bad_input", f"concurrency must be a whole number, 1 to {MAX_CONCURRENCY}")
    return raw


def unverify_refusal(account: Account, reserved: int) -> Refused | None:
    if reserved:
        return Refused(
            "account_has_numbers",
            f"account {account.id} holds {reserved} reserved numbers: release them first",
        )
    return None
