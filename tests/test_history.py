"""The store's side of the caller-ID choice: the DIAL script must pick exactly as the pure
`pick` does, and write all or nothing (real Redis)."""

from __future__ import annotations

import random

import pytest

from zvonok_agi.routing.callerid import CallerIdPlan, PoolAtCapacity, pick
from zvonok_agi.routing.model import Attempt
from zvonok_agi.store.history import AlreadyDialed, CallbackHistory

NOW = 1_800_000_000.0
MINUTE = int(NOW // 60)
CALLEE = "79161234567"


def plan_of(rng: random.Random) -> CallerIdPlan:
    if rng.random() < 0.2:
        return CallerIdPlan((f"7495{rng.randrange(10**7):07d}",), False, "reserved number")
    size = rng.choice([1, 2, 3, 5, 8])
    pool = [f"749500000{i:02d}" for i in range(size)]
    rng.shuffle(pool)
    return CallerIdPlan(tuple(pool), True, "service pool")


def attempt(n: int) -> Attempt:
    return Attempt(f"a{n}", "promo", "acme", "", CALLEE, NOW)


async def test_the_dial_script_picks_as_the_pure_rule_does(redis, settings) -> None:
    history = CallbackHistory(redis, settings.redis.key_prefix)
    prefix = settings.redis.key_prefix
    rng = random.Random(20261127)
    for n in range(300):
        stale = await redis.keys(f"{prefix}*")
        if stale:
            await redis.delete(*stale)
        plan = plan_of(rng)
        cap = rng.choice([1, 2, 3])
        previous = rng.choice([None, *plan.candidates, "74999999999"])
        usage = {did: rng.choice([0, 0, 1, 2, 3]) for did in plan.candidates}
        if previous is not None:
            await redis.set(f"{prefix}last:{CALLEE}", previous)
        for did, count in usage.items():
            if count:
                await redis.set(f"{prefix}cpm:{did}:{MINUTE}", count)
        try:
            expected: str | None = pick(plan, previous, usage, cap).did
        except PoolAtCapacity:
            expected = None

        recorded, shown_before = await history.record_dial(
            attempt(n),
            plan.candidates,
            avoid_previous=plan.avoids_previous,
            cap=cap if plan.from_pool else None,
        )

        case = (plan, previous, usage, cap)
        assert shown_before == previous, case
        assert (recorded.did if recorded else None) == expected, case
        last = await redis.get(f"{prefix}last:{CALLEE}")
        if expected is None:  # nothing written
            assert last == (previous.encode() if previous else None), case
            assert await redis.keys(f"{prefix}hist:*") == [], case
        else:
            assert last == expected.encode(), case
            count = int(await redis.get(f"{prefix}cpm:{expected}:{MINUTE}"))
            assert count == usage.get(expected, 0) + 1, case
            assert [a.id for a in await history.attempts(expected, CALLEE)] == [f"a{n}"], case


@pytest.mark.parametrize("previous", [None, "74950000001"])
async def test_undial_takes_back_everything_dial_wrote(redis, settings, previous) -> None:
    history = CallbackHistory(redis, settings.redis.key_prefix)
    prefix = settings.redis.key_prefix
    if previous:
        await redis.set(f"{prefix}last:{CALLEE}", previous)
    recorded, shown_before = await history.record_dial(
        attempt(1), ("74950000002",), avoid_previous=False, cap=5
    )
    assert recorded is not None and shown_before == previous
    await history.undial(recorded, shown_before)
    last = await redis.get(f"{prefix}last:{CALLEE}")
    assert last == (previous.encode() if previous else None)
    assert await redis.get(f"{prefix}cpm:74950000002:{MINUTE}") == b"0"
    assert await history.attempts("74950000002", CALLEE) == []
    assert await redis.get(f"{prefix}attempt:a1") is None


async def test_undial_leaves_a_later_calls_number_alone(redis, settings) -> None:
    history = CallbackHistory(redis, settings.redis.key_prefix)
    prefix = settings.redis.key_prefix
    first, _ = await history.record_dial(attempt(1), ("74950000001",), avoid_previous=True, cap=5)
    second, before = await history.record_dial(
        attempt(2), ("74950000001", "74950000002"), avoid_previous=True, cap=5
    )
    assert first is not None and second is not None
    assert second.did == "74950000002" and before == "74950000001"
    await history.undial(first, None)  # the first never left; the second did
    assert await redis.get(f"{prefix}last:{CALLEE}") == b"74950000002"


async def test_a_campaign_that_dials_each_callee_once_gets_one_attempt(redis, settings) -> None:
    history = CallbackHistory(redis, settings.redis.key_prefix)
    first, _ = await history.record_dial(
        attempt(1), ("74950000001",), avoid_previous=False, cap=None, via="ast1:5038"
    )
    assert first is not None
    placed = await history.dialed("promo", CALLEE)
    assert placed and (placed.attempt_id, placed.did, placed.via) == (
        "a1",
        "74950000001",
        "ast1:5038",
    )
    with pytest.raises(AlreadyDialed) as refused:
        await history.record_dial(
            attempt(2), ("74950000002",), avoid_previous=False, cap=None, via="ast1:5038"
        )
    assert (refused.value.attempt_id, refused.value.via) == ("a1", "ast1:5038")
    assert await history.attempts("74950000002", CALLEE) == []  # nothing written
    # Another campaign, or a call outside the rule, dials the callee as before.
    other = Attempt("b1", "other", "acme", "", CALLEE, NOW)
    assert (
        await history.record_dial(
            other, ("74950000002",), avoid_previous=False, cap=None, via="ast1:5038"
        )
    )[0] is not None
    assert (
        await history.record_dial(attempt(3), ("74950000002",), avoid_previous=False, cap=None)
    )[0] is not None
    # A call that never left is taken back with its mark: the campaign may dial it again.
    await history.undial(first, None)
    assert await history.dialed("promo", CALLEE) is None
    again, _ = await history.record_dial(
        attempt(4), ("74950000001",), avoid_previous=False, cap=None, via="ast1:5038"
    )
    assert again is not None
    await history.undial(first, None)  # an old attempt's take-back leaves the new mark alone
    placed = await history.dialed("promo", CALLEE)
    assert placed and placed.attempt_id == "a4"


async def test_a_claim_is_given_back_only_by_the_call_that_made_it_and_once(redis, settings):
    history = CallbackHistory(redis, settings.redis.key_prefix)
    missed = Attempt("a-missed", "promo", "acme", "74951234567", CALLEE, NOW)
    await history.record(missed, NOW)
    key = history.key(missed.did, missed.callee)

    async def callbacks() -> int:
        return int(await redis.hget(key, "a-missed:c"))

    assert await history.claim(missed, "call-1")
    assert not await history.claim(missed, "call-2")  # the first callback is taken
    assert not await history.release(missed, "call-2")  # not its claim: nothing changes
    assert await callbacks() == 1
    assert await history.release(missed, "call-1")
    assert await callbacks() == 0
    assert not await history.release(missed, "call-1")  # once
    assert await callbacks() == 0
    assert await history.claim(missed, "call-3")  # the next callback is a first one again
    assert await callbacks() == 1
    assert [a.callbacks for a in await history.attempts(missed.did, CALLEE)] == [1]
