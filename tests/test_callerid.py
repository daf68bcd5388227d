"""Which number an outbound call shows: routing-rules.md, "Caller ID for outbound calls".

Two parts:
1. one small case per rule (reserved numbers, the service pool, refusals);
2. hypothesis properties of `choose_caller_id` over generated pools, usage and histories, with
   the real numbering-plan regions (`phone.describe`).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zvonok_agi import phone
from zvonok_agi.routing.callerid import (
    CallerId,
    CallerIdRefused,
    PoolAtCapacity,
    callee_region,
    choose_caller_id,
)
from zvonok_agi.routing.model import (
    Account,
    Campaign,
    CampaignKind,
    CampaignState,
    Number,
    NumberStatus,
    Pool,
)

ACME = Account("acme", verified=True)
NEWBIE = Account("newbie", verified=False)
OLDCO = Account("oldco", verified=True)

RESERVED = "74951234567"  # acme's
OLDCO_NUMBER = "74957654321"  # oldco's
STOCK = "74959990000"  # reservable, nobody's yet
MOSCOW_SVC = ("74950000001", "74950000002")
OTHER_SVC = ("78120000001", "73830000001", "79160000001")  # St Petersburg, Novosibirsk, mobile
POOL = MOSCOW_SVC + OTHER_SVC
CAP = 6

MOSCOW_CALLEE = "74991112233"  # a Moscow landline
SPB_CALLEE = "78121234567"
MOBILE_CALLEE = "79161234567"  # Russian mobile ranges have no region


def service(did: str, status: NumberStatus = NumberStatus.ACTIVE) -> Number:
    return Number(did, Pool.SERVICE, status)


def reserved(did: str, owner: str | None, status: NumberStatus = NumberStatus.ACTIVE) -> Number:
    return Number(did, Pool.RESERVABLE, status, owner=owner)


NUMBERS: dict[str, Number] = {
    RESERVED: reserved(RESERVED, "acme"),
    OLDCO_NUMBER: reserved(OLDCO_NUMBER, "oldco"),
    STOCK: reserved(STOCK, None),
    **{did: service(did) for did in POOL},
}

SALE = Campaign("spring-sale", "acme", CampaignKind.OUTBOUND, caller_id=RESERVED)
ACME_POOL = Campaign("acme-pool", "acme", CampaignKind.OUTBOUND)
PROMO = Campaign("pool-promo", "newbie", CampaignKind.OUTBOUND)


def choose(
    campaign: Campaign,
    account: Account | None,
    numbers: dict[str, Number] = NUMBERS,
    callee: str = MOBILE_CALLEE,
    previous: str | None = None,
    usage: dict[str, int] | None = None,
    cap: int = CAP,
    seed: int = 0,
) -> CallerId:
    return choose_caller_id(
        campaign, account, numbers, callee, previous, usage or {}, cap, random.Random(seed)
    )


# --- reserved numbers ---------------------------------------------------------------------------


def test_reserved_number_of_its_verified_owner_while_active() -> None:
    choice = choose(SALE, ACME)
    assert choice.did == RESERVED
    assert not choice.from_pool


def test_reserved_number_ignores_pool_state_previous_and_region() -> None:
    # Cap, previous number and region are pool rules: a reserved number is not spread.
    choice = choose(
        SALE,
        ACME,
        callee=MOSCOW_CALLEE,
        previous=RESERVED,
        usage={RESERVED: 100, **{did: 100 for did in POOL}},
    )
    assert choice.did == RESERVED and not choice.from_pool


def test_unverified_owner_is_refused_its_reserved_number() -> None:
    unverified_acme = replace(ACME, verified=False)
    with pytest.raises(CallerIdRefused, match="not verified"):
        choose(SALE, unverified_acme)


def test_unverified_account_set_to_any_number_is_refused() -> None:
    for did in (RESERVED, OLDCO_NUMBER, STOCK, MOSCOW_SVC[0], "74990000000"):
        with pytest.raises(CallerIdRefused):
            choose(replace(PROMO, caller_id=did), NEWBIE)


def test_another_accounts_reserved_number_is_refused() -> None:
    with pytest.raises(CallerIdRefused, match="not reserved by account acme"):
        choose(replace(SALE, caller_id=OLDCO_NUMBER), ACME)


def test_a_number_in_stock_reserved_by_nobody_is_refused() -> None:
    with pytest.raises(CallerIdRefused, match="not reserved by account acme"):
        choose(replace(SALE, caller_id=STOCK), ACME)


def test_disabled_reserved_number_is_refused() -> None:
    numbers = {**NUMBERS, RESERVED: reserved(RESERVED, "acme", NumberStatus.DISABLED)}
    with pytest.raises(CallerIdRefused, match="disabled"):
        choose(SALE, ACME, numbers)


def test_service_number_as_campaign_caller_id_is_refused() -> None:
    with pytest.raises(CallerIdRefused, match="service number"):
        choose(replace(SALE, caller_id=MOSCOW_SVC[0]), ACME)


def test_unknown_number_is_refused() -> None:
    with pytest.raises(CallerIdRefused, match="not one of our numbers"):
        choose(replace(SALE, caller_id="74990000000"), ACME)


@pytest.mark.parametrize(
    "campaign, account, numbers",
    [
        (SALE, replace(ACME, verified=False), NUMBERS),
        (replace(SALE, caller_id=OLDCO_NUMBER), ACME, NUMBERS),
        (SALE, ACME, {**NUMBERS, RESERVED: reserved(RESERVED, "acme", NumberStatus.DISABLED)}),
        (replace(SALE, caller_id=MOSCOW_SVC[0]), ACME, NUMBERS),
        (replace(SALE, caller_id="74990000000"), ACME, NUMBERS),
        (SALE, ACME, {did: n for did, n in NUMBERS.items() if did != RESERVED}),
    ],
    ids=["unverified", "other-account", "disabled", "service", "unknown", "deleted"],
)
def test_a_refused_reserved_number_never_falls_back_to_the_pool(
    campaign: Campaign, account: Account, numbers: dict[str, Number]
) -> None:
    # The pool is healthy (five free numbers): still a refusal, for any callee and seed.
    for seed in range(20):
        for callee in (MOBILE_CALLEE, MOSCOW_CALLEE):
            with pytest.raises(CallerIdRefused):
                choose(campaign, account, numbers, callee=callee, seed=seed)


# --- campaigns and accounts ---------------------------------------------------------------------


@pytest.mark.parametrize("campaign", [SALE, ACME_POOL], ids=["reserved", "pool"])
def test_finished_campaign_is_refused(campaign: Campaign) -> None:
    with pytest.raises(CallerIdRefused, match="finished"):
        choose(replace(campaign, state=CampaignState.FINISHED), ACME)


@pytest.mark.parametrize("campaign", [SALE, ACME_POOL], ids=["reserved", "pool"])
def test_inbound_campaign_is_refused(campaign: Campaign) -> None:
    with pytest.raises(CallerIdRefused, match="not an outbound campaign"):
        choose(replace(campaign, kind=CampaignKind.INBOUND), ACME)


def test_paused_campaign_still_gets_its_number() -> None:
    # Pausing is the runner's business; the caller-ID rules do not refuse it.
    assert choose(replace(SALE, state=CampaignState.PAUSED), ACME).did == RESERVED


@pytest.mark.parametrize("account", [None, OLDCO], ids=["missing", "not-the-campaigns"])
def test_unknown_or_mismatched_account_is_refused(account: Account | None) -> None:
    with pytest.raises(CallerIdRefused, match="unknown"):
        choose(ACME_POOL, account)


# --- the service pool ---------------------------------------------------------------------------


def test_unverified_pool_campaign_gets_an_active_service_number() -> None:
    choice = choose(PROMO, NEWBIE)
    assert choice.from_pool
    assert choice.did in POOL


def test_verified_account_may_dial_from_the_pool_too() -> None:
    choice = choose(ACME_POOL, ACME)
    assert choice.from_pool and choice.did in POOL


def test_pool_never_offers_reserved_or_disabled_numbers() -> None:
    numbers = {**NUMBERS, **{did: service(did, NumberStatus.DISABLED) for did in POOL[1:]}}
    seen = {choose(PROMO, NEWBIE, numbers, seed=seed).did for seed in range(50)}
    assert seen == {POOL[0]}


def test_empty_pool_is_refused() -> None:
    no_pool = {did: n for did, n in NUMBERS.items() if not n.is_service}
    with pytest.raises(CallerIdRefused, match="no active number"):
        choose(PROMO, NEWBIE, no_pool)


def test_pool_of_disabled_numbers_only_is_refused() -> None:
    disabled = {**NUMBERS, **{did: service(did, NumberStatus.DISABLED) for did in POOL}}
    with pytest.raises(CallerIdRefused, match="no active number"):
        choose(PROMO, NEWBIE, disabled)


def test_all_at_cap_is_pool_at_capacity() -> None:
    with pytest.raises(PoolAtCapacity):
        choose(PROMO, NEWBIE, usage={did: CAP for did in POOL})
    with pytest.raises(PoolAtCapacity):
        choose(PROMO, NEWBIE, usage={did: CAP + 3 for did in POOL})


def test_only_the_previous_number_below_cap_is_pool_at_capacity() -> None:
    usage = {did: CAP for did in POOL if did != OTHER_SVC[0]}
    with pytest.raises(PoolAtCapacity):
        choose(PROMO, NEWBIE, usage=usage, previous=OTHER_SVC[0])


def test_the_one_free_number_is_chosen() -> None:
    usage = {did: CAP for did in POOL if did != OTHER_SVC[1]}
    for seed in range(20):
        assert choose(PROMO, NEWBIE, usage=usage, seed=seed).did == OTHER_SVC[1]


def test_pool_of_one_shows_its_number_again() -> None:
    numbers = {MOSCOW_SVC[0]: service(MOSCOW_SVC[0])}
    assert choose(PROMO, NEWBIE, numbers, previous=MOSCOW_SVC[0]).did == MOSCOW_SVC[0]
    with pytest.raises(PoolAtCapacity):
        choose(PROMO, NEWBIE, numbers, previous=MOSCOW_SVC[0], usage={MOSCOW_SVC[0]: CAP})


def test_pool_of_two_alternates() -> None:
    numbers = {did: service(did) for did in MOSCOW_SVC}
    previous = None
    for seed in range(20):
        did = choose(PROMO, NEWBIE, numbers, previous=previous, seed=seed).did
        assert did != previous
        previous = did


def test_previous_number_from_outside_the_pool_is_harmless() -> None:
    # The previous call may have shown a reserved number, or one since removed from the pool.
    assert choose(PROMO, NEWBIE, previous=RESERVED).did in POOL


def test_local_presence_for_a_moscow_callee() -> None:
    for seed in range(30):
        choice = choose(PROMO, NEWBIE, callee=MOSCOW_CALLEE, seed=seed)
        assert choice.did in MOSCOW_SVC
        assert "Moscow" in choice.reason


def test_local_presence_skips_the_previous_and_capped_numbers() -> None:
    # Of the two Moscow numbers one was shown last time: the other one, every time.
    for seed in range(20):
        choice = choose(PROMO, NEWBIE, callee=MOSCOW_CALLEE, previous=MOSCOW_SVC[0], seed=seed)
        assert choice.did == MOSCOW_SVC[1]
    # ... and when that one is at its cap, any free number of another region.
    usage = {MOSCOW_SVC[1]: CAP}
    for seed in range(20):
        choice = choose(
            PROMO, NEWBIE, callee=MOSCOW_CALLEE, previous=MOSCOW_SVC[0], usage=usage, seed=seed
        )
        assert choice.did in OTHER_SVC


def test_no_region_for_mobile_callees_so_any_number() -> None:
    assert callee_region(MOBILE_CALLEE) is None
    seen = Counter(choose(PROMO, NEWBIE, seed=seed).did for seed in range(300))
    assert set(seen) == set(POOL)  # random among all: every number comes up


def test_random_among_the_regional_numbers() -> None:
    seen = {choose(PROMO, NEWBIE, callee=MOSCOW_CALLEE, seed=seed).did for seed in range(100)}
    assert seen == set(MOSCOW_SVC)


# --- properties ---------------------------------------------------------------------------------

# Number ranges with a known region (or none: mobile), to build pools and callees from.
PREFIXES = ("7495", "7499", "7812", "7383", "7843", "7916", "7903")


def numbers_in(prefixes: tuple[str, ...] = PREFIXES) -> st.SearchStrategy[str]:
    return st.builds(
        lambda prefix, n: f"{prefix}{n:07d}",
        st.sampled_from(prefixes),
        st.integers(1_000_000, 9_999_999),
    )


@st.composite
def pools(draw: st.DrawFn) -> dict[str, Number]:
    dids = draw(st.lists(numbers_in(), min_size=0, max_size=8, unique=True))
    mostly_active = st.sampled_from([NumberStatus.ACTIVE] * 3 + [NumberStatus.DISABLED])
    statuses = draw(st.lists(mostly_active, min_size=len(dids), max_size=len(dids)))
    return {did: service(did, status) for did, status in zip(dids, statuses, strict=True)}


@st.composite
def pool_calls(draw: st.DrawFn) -> dict[str, object]:
    """A pool (service numbers, some disabled, plus reserved numbers that must never show),
    a callee, the previous number shown to it, this minute's usage, the cap and a seed."""
    numbers = draw(pools())
    for did in draw(st.lists(numbers_in(), max_size=3, unique=True)):
        numbers.setdefault(did, reserved(did, draw(st.sampled_from(["acme", "oldco", None]))))
    dids = sorted(numbers)
    cap = draw(st.integers(1, 6))
    usage = draw(st.dictionaries(st.sampled_from(dids), st.integers(0, 8)) if dids else st.just({}))
    active = sorted(
        did for did, n in numbers.items() if n.is_service and n.status is NumberStatus.ACTIVE
    )
    # Mostly a number the pool could show again (the interesting case), else any or none.
    if active and draw(st.integers(0, 3)):
        previous: str | None = draw(st.sampled_from(active))
    else:
        previous = draw(st.one_of(st.none(), st.sampled_from(dids))) if dids else None
    return {
        "numbers": numbers,
        "callee": draw(numbers_in()),
        "previous": previous,
        "usage": usage,
        "cap": cap,
        "seed": draw(st.integers(0, 2**32)),
        "account": draw(st.sampled_from([ACME, NEWBIE])),
    }


def region(did: str) -> str | None:
    return phone.describe(did)[1]


def run_pool(call: dict[str, object], rested: frozenset[str] = frozenset()) -> CallerId | Exception:
    account = call["account"]
    assert isinstance(account, Account)
    campaign = Campaign("c", account.id, CampaignKind.OUTBOUND)
    try:
        return choose_caller_id(
            campaign,
            account,
            call["numbers"],  # type: ignore[arg-type]
            call["callee"],  # type: ignore[arg-type]
            call["previous"],  # type: ignore[arg-type]
            call["usage"],  # type: ignore[arg-type]
            call["cap"],  # type: ignore[arg-type]
            random.Random(call["seed"]),  # type: ignore[arg-type]
            rested=rested,
        )
    except (CallerIdRefused, PoolAtCapacity) as exc:
        return exc


def usable(call: dict[str, object]) -> list[str]:
    """Active service numbers."""
    numbers = call["numbers"]
    assert isinstance(numbers, dict)
    return sorted(
        did for did, n in numbers.items() if n.is_service and n.status is NumberStatus.ACTIVE
    )


def free(call: dict[str, object]) -> list[str]:
    """Usable numbers the rules allow for this call: not the previous one (pool of two or
    more), under the cap this minute."""
    pool = usable(call)
    usage = call["usage"]
    assert isinstance(usage, dict)
    fresh = [did for did in pool if did != call["previous"]] if len(pool) > 1 else pool
    return [did for did in fresh if usage.get(did, 0) < call["cap"]]  # type: ignore[operator]


@settings(max_examples=200)
@given(pool_calls())
def test_property_pool_result_is_an_active_service_number(call: dict[str, object]) -> None:
    result = run_pool(call)
    if isinstance(result, CallerId):
        assert result.from_pool
        assert result.did in usable(call)
    elif isinstance(result, CallerIdRefused):
        assert usable(call) == []  # the only refusal of a pool call: nothing active
    else:
        assert isinstance(result, PoolAtCapacity)
        assert usable(call) and free(call) == []  # a passing state, never a rule


@settings(max_examples=200)
@given(pool_calls())
def test_property_never_the_previous_number_when_two_or_more_are_usable(
    call: dict[str, object],
) -> None:
    result = run_pool(call)
    if isinstance(result, CallerId) and len(usable(call)) >= 2:
        assert result.did != call["previous"]


@settings(max_examples=200)
@given(pool_calls())
def test_property_never_a_number_at_or_over_its_cap(call: dict[str, object]) -> None:
    result = run_pool(call)
    usage = call["usage"]
    assert isinstance(usage, dict)
    if isinstance(result, CallerId):
        assert usage.get(result.did, 0) < call["cap"]  # type: ignore[operator]
    # ... and a call is refused for capacity only when every allowed number is at its cap.
    assert isinstance(result, PoolAtCapacity) == bool(usable(call) and not free(call))


@settings(max_examples=200)
@given(pool_calls())
def test_property_regional_number_when_one_is_free(call: dict[str, object]) -> None:
    result = run_pool(call)
    wanted = region(call["callee"])  # type: ignore[arg-type]
    local = [did for did in free(call) if wanted is not None and region(did) == wanted]
    if local:
        assert isinstance(result, CallerId)
        assert result.did in local
    elif isinstance(result, CallerId):
        assert result.did in free(call)


@settings(max_examples=200)
@given(pool_calls())
def test_property_deterministic_given_the_seed(call: dict[str, object]) -> None:
    first, second = run_pool(call), run_pool(call)
    if isinstance(first, CallerId):
        assert first == second
    else:
        assert type(first) is type(second) and str(first) == str(second)


@st.composite
def reserved_calls(draw: st.DrawFn) -> dict[str, object]:
    """A campaign set to a number in any state: reserved by its account or another, in stock,
    a service number, disabled, unknown; its account verified or not; a healthy pool."""
    call = draw(pool_calls())
    numbers = dict(call["numbers"])  # type: ignore[call-overload]
    did = draw(numbers_in())
    kind = draw(st.sampled_from(["own", "other", "stock", "service", "unknown"]))
    status = draw(st.sampled_from(NumberStatus))
    if kind == "unknown":
        numbers.pop(did, None)
    elif kind == "service":
        numbers[did] = service(did, status)
    else:
        owner = {"own": "acme", "other": "oldco", "stock": None}[kind]
        numbers[did] = reserved(did, owner, status)
    account = draw(st.sampled_from([ACME, replace(ACME, verified=False)]))
    state = draw(st.sampled_from([CampaignState.RUNNING, CampaignState.PAUSED]))
    campaign = Campaign("sale", "acme", CampaignKind.OUTBOUND, state=state, caller_id=did)
    return {**call, "numbers": numbers, "campaign": campaign, "account": account}


@settings(max_examples=300)
@given(reserved_calls())
def test_property_reserved_campaign_gets_its_number_or_a_refusal(
    call: dict[str, object],
) -> None:
    campaign, account, numbers = call["campaign"], call["account"], call["numbers"]
    assert isinstance(campaign, Campaign) and isinstance(account, Account)
    assert isinstance(numbers, dict)
    try:
        result = choose_caller_id(
            campaign,
            account,
            numbers,
            call["callee"],  # type: ignore[arg-type]
            call["previous"],  # type: ignore[arg-type]
            call["usage"],  # type: ignore[arg-type]
            call["cap"],  # type: ignore[arg-type]
            random.Random(call["seed"]),  # type: ignore[arg-type]
        )
    except CallerIdRefused:
        number = numbers.get(campaign.caller_id)
        allowed = (
            account.verified
            and number is not None
            and number.is_reserved
            and number.owner == account.id
            and number.status is NumberStatus.ACTIVE
        )
        assert not allowed
        return
    # Never PoolAtCapacity (a reserved number is no pool number) and never a pool number.
    assert result.did == campaign.caller_id
    assert not result.from_pool
    number = numbers[result.did]
    assert account.verified and number.is_reserved and number.owner == account.id
    assert number.status is NumberStatus.ACTIVE
