"""Which number an outbound call shows (routing-rules.md, "Caller ID for outbound calls").

Pure: the inputs are the campaign, its account, the numbers, the callee, the number the
previous attempt to this callee showed, this minute's calls per number, the pool numbers
resting (routing/health.py), and a random source.

The choice comes in two steps so that the store can take the second one atomically with
recording the attempt: `plan_caller_id` puts the usable numbers in order of preference (the
callee's region first, each group shuffled; resting pool numbers after all others, in the same
order), and `pick` takes the first one that is not the
previous number and is under its cap. Taking the first eligible number of a shuffled group is
a uniformly random choice among the eligible ones.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import phone
from .model import Account, Campaign, CampaignKind, CampaignState, Number, NumberStatus


@dataclass(frozen=True, slots=True)
class CallerId:
    did: str
    from_pool: bool
    reason: str


@dataclass(frozen=True, slots=True)
class CallerIdPlan:
    """The numbers a call may show, best first; `pick` (or the store) takes one."""

    candidates: tuple[str, ...]
    from_pool: bool
    reason: str
    region: str | None = None
    local: frozenset[str] = frozenset()

    @property
    def avoids_previous(self) -> bool:
        """A pool of two or more never shows a callee the number of the previous call."""
        return self.from_pool and len(self.candidates) > 1

    def caller_id(self, did: str) -> CallerId:
        if did in self.local:
            return CallerId(did, True, f"{self.reason}, local to {self.region}")
        return CallerId(did, self.from_pool, self.reason)


class CallerIdRefused(Exception):
    """No call may be placed for this campaign: a rule forbids it (not a passing state)."""


class PoolAtCapacity(Exception):
    """Every usable pool number is at its calls-per-minute cap: wait for the next minute."""


def callee_region(callee: str) -> str | None:
    return phone.describe(callee)[1]


def choose_caller_id(
    campaign: Campaign,
    account: Account | None,
    numbers: Mapping[str, Number],
    callee: str,
    previous: str | None,
    usage: Mapping[str, int],
    cap: int,
    rng: random.Random,
    region_of: Callable[[str], str | None] = callee_region,
    rested: frozenset[str] = frozenset(),
) -> CallerId:
    """The caller ID for one call, or CallerIdRefused / PoolAtCapacity.

    A campaign set to a reserved number dials only from it, only for its verified owner while
    it is active: it never falls back to the pool. A pool campaign (and every campaign of an
    unverified account) gets a random active service number, never the one `previous` showed
    (when the pool has two or more), preferring the callee's region, never over `cap` calls
    this minute, and a resting number only when no other may take the call.
    """
    plan = plan_caller_id(campaign, account, numbers, callee, rng, region_of, rested)
    return pick(plan, previous, usage, cap)


def plan_caller_id(
    campaign: Campaign,
    account: Account | None,
    numbers: Mapping[str, Number],
    callee: str,
    rng: random.Random,
    region_of: Callable[[str], str | None] = callee_region,
    rested: frozenset[str] = frozenset(),
) -> CallerIdPlan:
    """The numbers this call may show, best first; CallerIdRefused if a rule forbids the call.
    A paused campaign gets its plan: pausing is the dialer's business."""
    if campaign.kind is not CampaignKind.OUTBOUND:
        raise CallerIdRefused(f"campaign {campaign.id} is not an outbound campaign")
    if campaign.state is CampaignState.FINISHED:
        raise CallerIdRefused(f"campaign {campaign.id} is finished")
    if account is None or account.id != campaign.account:
        raise CallerIdRefused(f"campaign {campaign.id}: account {campaign.account} is unknown")
    if campaign.caller_id is not None:
        return _reserved(campaign, account, numbers.get(campaign.caller_id), campaign.caller_id)
    return _pool_plan(numbers, callee, rng, region_of, rested)


def pick(plan: CallerIdPlan, previous: str | None, usage: Mapping[str, int], cap: int) -> CallerId:
    """The first candidate that is not the previous number (see `avoids_previous`) and, for
    the pool, under `cap` calls this minute; PoolAtCapacity when there is none."""
    for did in plan.candidates:
        if plan.avoids_previous and did == previous:
            continue
        if plan.from_pool and usage.get(did, 0) >= cap:
            continue
        return plan.caller_id(did)
    usable = len(plan.candidates) - (plan.avoids_previous and previous in plan.candidates)
    raise PoolAtCapacity(f"all {usable} usable pool numbers are at {cap} calls/min")


def _reserved(
    campaign: Campaign, account: Account, number: Number | None, did: str
) -> CallerIdPlan:
    if not account.verified:
        raise CallerIdRefused(
            f"account {account.id} is not verified: it dials from the service pool only, "
            f"not from {did}"
        )
    if number is None:
        raise CallerIdRefused(f"caller ID {did} is not one of our numbers")
    if number.is_service:
        raise CallerIdRefused(f"{did} is a service number: set the campaign to the pool")
    if number.owner != account.id:
        raise CallerIdRefused(f"{did} is not reserved by account {account.id}")
    if number.status is not NumberStatus.ACTIVE:
        raise CallerIdRefused(f"{did} is disabled")
    return CallerIdPlan((did,), False, f"reserved number of {account.id}")


def _pool_plan(
    numbers: Mapping[str, Number],
    callee: str,
    rng: random.Random,
    region_of: Callable[[str], str | None],
    rested: frozenset[str],
) -> CallerIdPlan:
    pool = sorted(
        n.did for n in numbers.values() if n.is_service and n.status is NumberStatus.ACTIVE
    )
    if not pool:
        raise CallerIdRefused("the service pool has no active number")
    region = region_of(callee)
    local: list[str] = []
    others: list[str] = []
    for did in pool:
        (local if region is not None and region_of(did) == region else others).append(did)
    rng.shuffle(local)
    rng.shuffle(others)
    ranked = local + others
    if rested:
        ranked = [d for d in ranked if d not in rested] + [d for d in ranked if d in rested]
    return CallerIdPlan(tuple(ranked), True, "service pool", region, frozenset(local))
