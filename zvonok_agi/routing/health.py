"""Number health: which service-pool numbers to rest (docs/routing.md, "Number health").

Carriers and phones label a number that calls a lot and gets few answers, and a labelled
number's answer rate collapses. A pool number whose answer rate over the window falls below
`fraction` of the pool's median is rested for a cool-down: the caller-ID choice puts it after
every other pool number, so it shows only when no other number may take the call.

Pure: the inputs are the pool, each number's counts over the window, which numbers rest until
when, and the time.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HealthRule:
    fraction: float = 0.5  # rested below this share of the pool's median answer rate
    min_placed: int = 30  # calls in the window before a number is judged at all
    max_rested_share: float = 0.25  # of the pool, at most, rest at once (never all of it)
    cooldown: float = 6 * 3600.0  # seconds a rested number stays out


@dataclass(frozen=True, slots=True)
class Counts:
    """One number's calls over the window: placed (reached Asterisk), answered."""

    placed: int = 0
    answered: int = 0

    @property
    def rate(self) -> float | None:
        return self.answered / self.placed if self.placed else None


@dataclass(frozen=True, slots=True)
class Review:
    """What one look at the pool decides: numbers to rest (until when), numbers back."""

    rest: Mapping[str, float]
    back: frozenset[str]
    median: float | None


def pool_median(
    pool: Collection[str], counts: Mapping[str, Counts], rule: HealthRule
) -> float | None:
    """The median answer rate of the pool numbers judged (min_placed calls or more)."""
    rates = [
        c.rate
        for did in pool
        if (c := counts.get(did)) is not None and c.placed >= rule.min_placed and c.rate is not None
    ]
    return statistics.median(rates) if rates else None


def max_rested(pool_size: int, rule: HealthRule) -> int:
    """How many numbers may rest at once: the share of the pool, and never the whole pool."""
    return max(0, min(math.floor(rule.max_rested_share * pool_size), pool_size - 1))


def review(
    pool: Collection[str],
    counts: Mapping[str, Counts],
    rested_until: Mapping[str, float],
    now: float,
    rule: HealthRule,
) -> Review:
    """Numbers whose cool-down is over come back; then, while fewer than `max_rested` rest, the
    judged numbers below `fraction` x the median rest, the worst rate first (then by number)."""
    back = frozenset(did for did, until in rested_until.items() if until <= now)
    resting = {did for did, until in rested_until.items() if until > now and did in pool}
    median = pool_median(pool, counts, rule)
    room = max_rested(len(pool), rule) - len(resting)
    if median is None or room <= 0:
        return Review({}, back, median)
    below = sorted(
        (c.rate, did)
        for did in pool
        if did not in resting
        and did not in back  # judged again on a clean slate (its counts start afresh)
        and (c := counts.get(did)) is not None
        and c.placed >= rule.min_placed
        and c.rate is not None
        and c.rate < rule.fraction * median
    )
    until = now + rule.cooldown
    return Review({did: until for _, did in below[:room]}, back, median)
