"""The store's side of the caller-ID choice and of the callback claim, on one Redis server and
on a three-master Redis Cluster: the dial steps must pick exactly as the pure `pick` does, keep
their guarantees under concurrent calls, and take back all they wrote."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import pytest
from structlog.testing import capture_logs

from zvonok_agi.routing.callerid import CallerIdPlan, PoolAtCapacity, pick
from zvonok_agi.routing.model import Attempt, Outcome
from zvonok_agi.store.history import AlreadyDialed, CallbackHistory

NOW = 1_800_000_000.0
CALLEE = "79161234567"
POOL = ("74950000001", "74950000002")


def plan_of(rng: random.Random) -> CallerIdPlan:
    if rng.random() < 0.2:
        return CallerIdPlan((f"7495{rng.randrange(10**7):07d}",), False, "reserved number")
    size = rng.choice([1, 2, 3, 5, 8])
    pool = [f"749500000{i:02d}" for i in range(size)]
    rng.shuffle(pool)
    return CallerIdPlan(tuple(pool), True, "service pool")


def attempt(n: int, callee: str = CALLEE) -> Attempt:
    return Attempt(f"a{n}", "promo", "acme", "", callee, NOW)


def history_on(store, prefix: str | None = None) -> CallbackHistory:
    return CallbackHistory(store, prefix or f"t{uuid.uuid4().hex[:8]}:")


async def test_the_dial_steps_pick_as_the_pure_rule_does(store) -> None:
    rng = random.Random(20261127)
    for n in range(300):
        history = history_on(store)  # a prefix of its own: a clean slate per case
        plan = plan_of(rng)
        cap = rng.choice([1, 2, 3])
        previous = rng.choice([None, *plan.candidates, "74999999999"])
        usage = {did: rng.choice([0, 0, 1, 2, 3]) for did in plan.candidates}
        if previous is not None:
            await store.set(history.last_key(CALLEE), previous)
        for did, count in usage.items():
            if count:
                await store.set(history.count_key(did, NOW), count)
        try:
            expected: str | None = pick(plan, previous, usage, cap).did
        except PoolAtCapacity:
            expected = None

        counted = cap if plan.from_pool else None
        recorded, shown_before = await history.record_dial(
            attempt(n), plan.candidates, avoid_previous=plan.avoids_previous, cap=counted
        )

        case = (plan, previous, usage, cap)
        assert shown_before == previous, case
        assert (recorded.did if recorded else None) == expected, case
        last = await store.get(history.last_key(CALLEE))
        counts = {did: int(await store.get(history.count_key(did, NOW)) or 0) for did in usage}
        written = [did for did in plan.candidates if await history.attempts(did, CALLEE)]
        if expected is None:  # nothing written
            assert last == (previous.encode() if previous else None), case
            assert written == [] and counts == usage, case
        else:
            assert last == expected.encode(), case
            assert written == [expected], case
            assert [a.id for a in await history.attempts(expected, CALLEE)] == [f"a{n}"], case
            # Counted against the cap; a reserved number has none: nothing counted.
            assert counts == {**usage, expected: usage[expected] + plan.from_pool}, case


@pytest.mark.parametrize("previous", [None, "74950000001"])
async def test_undial_takes_back_everything_dial_wrote(store, previous) -> None:
    history = history_on(store)
    if previous:
        await store.set(history.last_key(CALLEE), previous)
    recorded, shown_before = await history.record_dial(
        attempt(1), ("74950000002",), avoid_previous=False, cap=5
    )
    assert recorded is not None and shown_before == previous
    await history.undial(recorded, shown_before)
    last = await store.get(history.last_key(CALLEE))
    assert last == (previous.encode() if previous else None)
    assert await store.get(history.count_key("74950000002", NOW)) == b"0"
    assert await history.attempts("74950000002", CALLEE) == []


async def test_undial_leaves_a_later_calls_number_alone(store) -> None:
    history = history_on(store)
    first, _ = await history.record_dial(attempt(1), POOL[:1], avoid_previous=True, cap=5)
    second, before = await history.record_dial(attempt(2), POOL, avoid_previous=True, cap=5)
    assert first is not None and second is not None
    assert second.did == POOL[1] and before == POOL[0]
    await history.undial(first, None)  # the first never left; the second did
    assert await store.get(history.last_key(CALLEE)) == POOL[1].encode()


async def test_calls_at_once_to_one_callee_never_show_the_number_it_saw_last(store) -> None:
    """Each step replaces the callee's last number by another: concurrent dials that pick
    the same number find out at COMMIT, give back their count and take the next one."""
    history = history_on(store)
    results = await asyncio.gather(
        *(history.record_dial(attempt(n), POOL, avoid_previous=True, cap=None) for n in range(40))
    )
    changes = [(previous, recorded.did) for recorded, previous in results if recorded]
    assert changes and all(previous != did for previous, did in changes)
    assert [previous for previous, _ in changes].count(None) == 1
    # Followed from the start, the changes make one chain that ends at the last number.
    shown, chain = None, []
    remaining = list(changes)
    while remaining:
        step = next(c for c in remaining if c[0] == shown)
        remaining.remove(step)
        shown = step[1]
        chain.append(shown)
    assert (await store.get(history.last_key(CALLEE))).decode() == chain[-1]


async def test_calls_at_once_never_take_a_number_over_its_cap(store) -> None:
    history = history_on(store)
    callees = [f"7916000{n:04d}" for n in range(30)]
    results = await asyncio.gather(
        *(
            history.record_dial(attempt(n, callee), POOL, avoid_previous=True, cap=4)
            for n, callee in enumerate(callees)
        )
    )
    placed = [recorded.did for recorded, _ in results if recorded]
    assert sorted(placed) == sorted(POOL * 4)  # 2 numbers x 4 calls, the rest turned away
    for did in POOL:
        assert await store.get(history.count_key(did, NOW)) == b"4"


async def test_fifty_simultaneous_claims_of_one_attempt_one_wins(store) -> None:
    history = history_on(store)
    dialed = Attempt("a1", "promo", "acme", POOL[0], CALLEE, time.time(), Outcome.NO_ANSWER)
    await history.record(dialed, time.time())
    wins = await asyncio.gather(*(history.claim(dialed, f"call-{n}") for n in range(50)))
    assert wins.count(True) == 1
    [kept] = await history.attempts(POOL[0], CALLEE)
    assert kept.callbacks == 1


async def test_settle_finds_the_attempt_and_says_when_it_is_gone(store) -> None:
    history = history_on(store)
    recorded, _ = await history.record_dial(attempt(1), POOL, avoid_previous=True, cap=None)
    assert recorded is not None
    assert await history.settle(recorded, Outcome.BUSY)
    [kept] = await history.attempts(recorded.did, CALLEE)
    assert kept.outcome is Outcome.BUSY
    await history.undial(recorded, None)
    assert not await history.settle(recorded, Outcome.ANSWERED)


async def test_a_claim_waits_for_replicas_at_most_its_budget_and_still_wins(store) -> None:
    """Here no replica acknowledges (there is none): the claim stands after the wait, and the
    shortfall is logged (a failover in that moment could lose it)."""
    history = CallbackHistory(store, f"t{uuid.uuid4().hex[:8]}:", claim_replicas=1, claim_wait=0.05)
    dialed = Attempt("a1", "promo", "acme", POOL[0], CALLEE, time.time(), Outcome.NO_ANSWER)
    await history.record(dialed, time.time())
    started = time.monotonic()
    with capture_logs() as logs:
        assert await history.claim(dialed, "call-1")
        assert not await history.claim(dialed, "call-2")
    assert time.monotonic() - started >= 0.1  # both waited their 50 ms
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["replicas"] == 0


async def test_a_claim_is_given_back_only_by_the_call_that_made_it_and_once(store):
    history = history_on(store)
    missed = Attempt("a-missed", "promo", "acme", "74951234567", CALLEE, NOW)
    await history.record(missed, NOW)
    key = history.key(missed.did, missed.callee)

    async def callbacks() -> int:
        return int(await store.hget(key, "a-missed:c"))

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


async def test_a_campaign_that_dials_each_callee_once_gets_one_attempt(store) -> None:
    history = history_on(store)
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


async def test_a_callee_dialed_once_is_refused_even_with_the_pool_full(store) -> None:
    """Refused as dialed, not told to wait for a free number (then refused)."""
    history = history_on(store)
    first, _ = await history.record_dial(attempt(1), POOL, avoid_previous=True, cap=1, via="a")
    assert first is not None
    other = Attempt("b1", "other", "acme", "", "79160000000", NOW)
    assert (await history.record_dial(other, POOL, avoid_previous=True, cap=1))[0] is not None
    with pytest.raises(AlreadyDialed):
        await history.record_dial(attempt(2), POOL, avoid_previous=True, cap=1, via="a")


async def test_one_campaign_dialing_one_callee_twice_at_once_records_one_call(store) -> None:
    history = history_on(store)
    results = await asyncio.gather(
        *(
            history.record_dial(attempt(n), POOL, avoid_previous=True, cap=5, via="a")
            for n in range(10)
        ),
        return_exceptions=True,
    )
    recorded = [r for r in results if not isinstance(r, BaseException)]
    assert len(recorded) == 1 and recorded[0][0] is not None
    assert all(isinstance(r, AlreadyDialed) for r in results if r not in recorded)
    counts = [int(await store.get(history.count_key(did, NOW)) or 0) for did in POOL]
    assert sum(counts) == 1  # the refused calls gave their counts back
