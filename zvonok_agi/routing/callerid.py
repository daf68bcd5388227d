"""Which number an outbound call shows (routing-rules.md, "Caller ID for outbound calls").

Pure: the inputs are the campaign, its account, the numbers, the callee, the number the
previous attempt to this callee showed, this minute's calls per number, and a random source.
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
) -> CallerId:
    """The caller ID for one call, or CallerIdRefused / PoolAtCapacity.

    A campaign set to a reserved number dials only from it, only for its verified owner while
    it is active: it never falls back to the pool. A pool campaign (and every campaign of an
    unverified account) gets a random active service number, never the one `previous` showed
    (when the pool has two or more), preferring the callee's region, never over `cap` calls
    this minute.
    """
    if campaign.kind is not CampaignKind.OUTBOUND:
        raise CallerIdRefused(f"campaign {campaign.id} is not an outbound campaign")
    if campaign.state is CampaignState.FINISHED:
        raise CallerIdRefused(f"campaign {campaign.id} is finished")
    if account is None or account.id != campaign.account:
        raise CallerIdRefused(f"campaign {campaign.id}: account {campaign.account} is unknown")
    if campaign.caller_id is not None:
        return _reserved(campaign, account, numbers.get(campaign.caller_id), campaign.caller_id)
    return _from_pool(numbers, callee, previous, usage, cap, rng, region_of)


def _reserved(campaign: Campaign, account: Account, number: Number | None, did: str) -> CallerId:
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
    return CallerId(did, False, f"reserved number of {account.id}")


def _from_pool(
    numbers: Mapping[str, Number],
    callee: str,
    previous: str | None,
    usage: Mapping[str, int],
    cap: int,
    rng: random.Random,
    region_of: Callable[[str], str | None],
) -> CallerId:
    pool = sorted(
        n.did for n in numbers.values() if n.is_service and n.status is NumberStatus.ACTIVE
    )
    if not pool:
        raise CallerIdRefused("the service pool has no active number")
    fresh = [did for did in pool if did != previous] if len(pool) > 1 else pool
    free = [did for did in fresh if usage.get(did, 0) < cap]
    if not free:
        raise PoolAtCapacity(f"all {len(fresh)} usable pool numbers are at {cap} calls/min")
    region = region_of(callee)
    local = [did for did in free if region is not None and region_of(did) == region]
    if local:
        return CallerId(rng.choice(local), True, f"service pool, local to {region}")
    return CallerId(rng.choice(free), True, "service pool")
