"""Number health, the pure rule (routing/health.py) and how the caller-ID choice uses it:
the examples of docs/routing.md "Number health", then properties."""

from __future__ import annotations

import random
import statistics

from hypothesis import given, settings
from hypothesis import strategies as st
from test_callerid import ACME, POOL, free, pool_calls, run_pool, usable

from zvonok_agi.routing.callerid import (
    CallerId,
    choose_caller_id,
)
from zvonok_agi.routing.health import Counts, HealthRule, max_rested, pool_median, review
from zvonok_agi.routing.model import Campaign, CampaignKind, Number, NumberStatus, Pool

RULE = HealthRule(fraction=0.5, min_placed=30, max_rested_share=0.25, cooldown=3600.0)
NOW = 1_000_000.0


def pool_of(*rates: tuple[int, int]) -> tuple[list[str], dict[str, Counts]]:
    dids = [f"7495000{i:04d}" for i in range(len(rates))]
    return dids, {did: Counts(p, a) for did, (p, a) in zip(dids, rates, strict=True)}


# --- the documented examples ----------------------------------------------------------------


def test_a_number_below_half_the_median_rests_for_the_cooldown() -> None:
    # Rates 40 %, 42 %, 45 %, 38 % and 15 %: the median is 40 %, 15 % < 20 %.
    dids, counts = pool_of((100, 40), (100, 42), (100, 45), (100, 38), (100, 15))
    result = review(dids, counts, {}, NOW, RULE)
    assert result.median == 0.40
    assert result.rest == {dids[4]: NOW + 3600.0}
    assert result.back == frozenset()


def test_exactly_the_threshold_is_not_below_it() -> None:
    dids, counts = pool_of((100, 40), (100, 40), (100, 20), (100, 45))
    assert review(dids, counts, {}, NOW, RULE).rest == {}


def test_a_new_number_is_not_judged_before_min_placed_calls() -> None:
    dids, counts = pool_of((100, 40), (100, 42), (100, 45), (29, 0))
    result = review(dids, counts, {}, NOW, RULE)
    assert result.rest == {}
    assert result.median == 0.42  # the new number is not in the median either


def test_never_more_than_the_share_of_the_pool_the_worst_first() -> None:
    # A pool of 8 rests at most 2 (25 %): of four bad numbers, the two worst.
    dids, counts = pool_of(*[(100, 50)] * 4, (100, 10), (100, 5), (100, 20), (100, 8))
    result = review(dids, counts, {}, NOW, RULE)
    assert set(result.rest) == {dids[5], dids[7]}


def test_numbers_resting_already_count_against_the_share() -> None:
    dids, counts = pool_of(*[(100, 50)] * 4, (100, 10), (100, 5), (100, 20), (100, 8))
    result = review(dids, counts, {dids[0]: NOW + 10, dids[5]: NOW + 10}, NOW, RULE)
    assert result.rest == {}


def test_a_small_pool_rests_nothing() -> None:
    # 25 % of 3 numbers is 0 of them: a pool too small to spare one keeps all.
    dids, counts = pool_of((100, 50), (100, 50), (100, 1))
    assert review(dids, counts, {}, NOW, RULE).rest == {}
    assert max_rested(1, HealthRule(max_rested_share=1.0)) == 0


def test_the_cooldown_over_the_number_is_back_and_not_judged_again_at_once() -> None:
    dids, counts = pool_of(*[(100, 50)] * 7, (100, 5))
    result = review(dids, counts, {dids[7]: NOW}, NOW, RULE)
    assert result.back == {dids[7]}
    assert result.rest == {}


def test_a_zero_median_rests_nothing() -> None:
    dids, counts = pool_of(*[(100, 0)] * 8)
    assert review(dids, counts, {}, NOW, RULE).rest == {}


NUMBERS = {did: Number(did, Pool.SERVICE, NumberStatus.ACTIVE) for did in POOL}
CAMPAIGN = Campaign("c", "acme", CampaignKind.OUTBOUND)


def test_a_rested_number_shows_only_when_no_other_can() -> None:
    rested = frozenset(POOL[1:])
    choose = lambda usage: choose_caller_id(  # noqa: E731
        CAMPAIGN, ACME, NUMBERS, "74991112233", None, usage, 6, random.Random(1), rested=rested
    )
    assert choose({}).did == POOL[0]
    assert choose({POOL[0]: 6}).did in rested  # the only one not resting is at its cap


# --- properties -----------------------------------------------------------------------------


@st.composite
def reviews(draw: st.DrawFn) -> tuple:
    dids = draw(st.lists(st.integers(0, 99), min_size=0, max_size=12, unique=True))
    pool = [f"7495{i:07d}" for i in dids]
    counts = {}
    for did in pool:
        placed = draw(st.integers(0, 80))
        counts[did] = Counts(placed, draw(st.integers(0, placed)))
    rested = {
        did: NOW + draw(st.sampled_from([-100.0, 0.0, 50.0]))
        for did in draw(st.lists(st.sampled_from(pool), unique=True) if pool else st.just([]))
    }
    rule = HealthRule(
        fraction=draw(st.sampled_from([0.25, 0.5, 0.8, 1.0])),
        min_placed=draw(st.integers(1, 40)),
        max_rested_share=draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0])),
        cooldown=600.0,
    )
    return pool, counts, rested, rule


def judged(pool, counts, rule) -> dict[str, float]:
    return {
        did: counts[did].answered / counts[did].placed
        for did in pool
        if counts[did].placed >= rule.min_placed
    }


@settings(max_examples=300)
@given(reviews())
def test_property_never_rests_more_than_the_share_nor_the_whole_pool(case) -> None:
    pool, counts, rested, rule = case
    result = review(pool, counts, rested, NOW, rule)
    resting = {did for did, until in rested.items() if until > NOW}
    total = len(resting | set(result.rest))
    assert total <= max(len(resting), int(rule.max_rested_share * len(pool)))
    if pool and result.rest:
        assert total < len(pool)


@settings(max_examples=300)
@given(reviews())
def test_property_the_median_rule_exactly(case) -> None:
    pool, counts, rested, rule = case
    result = review(pool, counts, rested, NOW, rule)
    rates = judged(pool, counts, rule)
    median = statistics.median(rates.values()) if rates else None
    assert result.median == median
    assert median == pool_median(pool, counts, rule)
    resting = {did for did, until in rested.items() if until > NOW}
    eligible = {
        did
        for did, rate in rates.items()
        if rate < rule.fraction * median and did not in resting and did not in result.back
    }
    assert set(result.rest) <= eligible
    assert all(until == NOW + rule.cooldown for until in result.rest.values())
    # Every eligible number rests unless the share is used up; those resting are the worst.
    room = max_rested(len(pool), rule) - len(resting)
    assert len(result.rest) == min(len(eligible), max(room, 0))
    left = eligible - set(result.rest)
    if result.rest and left:
        assert max(rates[d] for d in result.rest) <= min(rates[d] for d in left)


@settings(max_examples=300)
@given(reviews())
def test_property_back_exactly_when_the_cooldown_is_over(case) -> None:
    pool, counts, rested, rule = case
    result = review(pool, counts, rested, NOW, rule)
    assert result.back == {did for did, until in rested.items() if until <= NOW}


@st.composite
def rested_calls(draw: st.DrawFn) -> dict[str, object]:
    call = draw(pool_calls())
    numbers = sorted(call["numbers"])  # type: ignore[call-overload]
    call["rested"] = frozenset(
        draw(st.lists(st.sampled_from(numbers), unique=True)) if numbers else []
    )
    return call


@settings(max_examples=300)
@given(rested_calls())
def test_property_a_rested_number_never_shows_while_another_is_usable(call) -> None:
    result = run_pool(call, call["rested"])
    others = [did for did in free(call) if did not in call["rested"]]
    if others:
        assert isinstance(result, CallerId)
        assert result.did in others


@settings(max_examples=300)
@given(rested_calls())
def test_property_resting_never_costs_a_call_its_number(call) -> None:
    with_rest, without = run_pool(call, call["rested"]), run_pool(call)
    assert type(with_rest) is type(without)
    if isinstance(with_rest, CallerId):
        assert with_rest.did in free(call)
        assert with_rest.did in usable(call)
