"""The inbound routing decision, from routing-rules.md ("Routing an inbound call").

Three parts:
1. every row of the rules' "Examples" table, one parametrized case per row (and per value of an
   "any" column);
2. the other rules of the text, one small case each;
3. hypothesis invariants over generated numbers, campaigns and call histories.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zvonok_agi.routing.decision import (
    DEFAULT_CALLBACK_WINDOW,
    accepts_inbound,
    decide,
    fallback_without_store,
    latest_attempt,
)
from zvonok_agi.routing.model import (
    Attempt,
    CallbackRule,
    Campaign,
    CampaignKind,
    CampaignState,
    Decision,
    Fallback,
    Number,
    NumberStatus,
    Outcome,
    Pool,
    Route,
    RouteKind,
)

MINUTE = 60.0
HOUR = 3600.0
DAY = 24 * HOUR
WINDOW = 7 * DAY
NOW = 1_700_000_000.0  # a fixed "now"; every time below is relative to it

ACME_DID = "74951234567"  # reserved by acme, inbound campaign "support" bound
ACME_OTHER_DID = "74957654321"  # another of acme's numbers
SERVICE_DID = "74950000001"  # in the shared service pool
CALLER = "79161234567"

SUPPORT = Campaign("support", "acme", CampaignKind.INBOUND)
# globex owned ACME_DID before acme: its campaign and its history with the caller
WINTER_PROMO = Campaign("winter-promo", "globex", CampaignKind.OUTBOUND, accept_inbound=True)
# a campaign of yet another account, dialing from the service pool
FIRST_CALL = Campaign("first-call", "initech", CampaignKind.OUTBOUND, accept_inbound=True)


def spring_sale(
    accept_inbound: bool = True, state: CampaignState = CampaignState.RUNNING
) -> Campaign:
    """acme's outbound campaign."""
    return Campaign("spring-sale", "acme", CampaignKind.OUTBOUND, accept_inbound, state)


def acme_number(
    rule: CallbackRule = CallbackRule.AS_CAMPAIGN,
    inbound: str | None = "support",
    status: NumberStatus = NumberStatus.ACTIVE,
) -> Number:
    return Number(
        ACME_DID,
        Pool.RESERVABLE,
        status=status,
        owner="acme",
        callback_rule=rule,
        inbound_campaign=inbound,
    )


def service_number(status: NumberStatus = NumberStatus.ACTIVE) -> Number:
    return Number(SERVICE_DID, Pool.SERVICE, status=status)


def campaigns(*extra: Campaign, sale: Campaign | None = None) -> dict[str, Campaign]:
    """Everything the store knows: support, spring-sale, the previous owner's campaign, ..."""
    known = [SUPPORT, sale or spring_sale(), WINTER_PROMO, FIRST_CALL, *extra]
    return {c.id: c for c in known}


def dialed(
    ago: float,
    outcome: Outcome = Outcome.NO_ANSWER,
    *,
    campaign: Campaign | None = None,
    callbacks: int = 0,
    did: str = ACME_DID,
    id: str = "att-1",
) -> Attempt:
    """An attempt to CALLER `ago` seconds before NOW (spring-sale, from acme's number)."""
    campaign = campaign or spring_sale()
    return Attempt(id, campaign.id, campaign.account, did, CALLER, NOW - ago, outcome, callbacks)


def assert_route(decision: Decision, kind: RouteKind, target: str | Fallback) -> None:
    """`target` is the campaign id for OUTBOUND/INBOUND routes, the fallback for FALLBACK."""
    route = decision.route
    assert route.kind is kind, decision
    if kind is RouteKind.FALLBACK:
        assert route.fallback is target, decision
        assert route.campaign is None, decision
    else:
        assert route.campaign == target, decision
        assert route.fallback is None, decision
    assert isinstance(decision.reason, str) and decision.reason.strip(), decision


OUTBOUND, INBOUND, FALLBACK = RouteKind.OUTBOUND, RouteKind.INBOUND, RouteKind.FALLBACK
RULES = list(CallbackRule)
YES_NO = [pytest.param(True, id="accept-yes"), pytest.param(False, id="accept-no")]


# --------------------------------------------------------------------------------------------
# 1. The Examples table of routing-rules.md, row by row
# --------------------------------------------------------------------------------------------


def _example_rows():
    rule = CallbackRule
    # "any" history, for the disabled-number row
    histories = {
        "never-dialed": [],
        "dialed-1h-no-answer": [dialed(HOUR)],
        "dialed-1h-answered": [dialed(HOUR, Outcome.ANSWERED)],
        "one-callback-already": [dialed(HOUR, callbacks=1)],
        "dialed-8d-ago": [dialed(8 * DAY)],
    }

    yield pytest.param(
        acme_number(rule.AS_CAMPAIGN), campaigns(), [dialed(HOUR)],
        OUTBOUND, "spring-sale",
        id="as_campaign|yes|1h-ago-no-answer-no-callback->outbound",
    )  # fmt: skip
    yield pytest.param(
        acme_number(rule.AS_CAMPAIGN), campaigns(), [dialed(HOUR, callbacks=1)],
        INBOUND, "support",
        id="as_campaign|yes|one-callback-already-routed->inbound",
    )  # fmt: skip
    yield pytest.param(
        acme_number(rule.AS_CAMPAIGN), campaigns(), [dialed(HOUR, Outcome.ANSWERED)],
        INBOUND, "support",
        id="as_campaign|yes|1h-ago-answered->inbound",
    )  # fmt: skip
    yield pytest.param(
        acme_number(rule.AS_CAMPAIGN), campaigns(sale=spring_sale(accept_inbound=False)),
        [dialed(HOUR)],
        INBOUND, "support",
        id="as_campaign|no|1h-ago-no-answer->inbound",
    )  # fmt: skip
    yield pytest.param(
        acme_number(rule.FORCE_YES), campaigns(sale=spring_sale(accept_inbound=False)),
        [dialed(HOUR, Outcome.BUSY)],
        OUTBOUND, "spring-sale",
        id="force_yes|no|1h-ago-busy->outbound",
    )  # fmt: skip
    yield pytest.param(
        acme_number(rule.FORCE_NO), campaigns(), [dialed(HOUR)],
        INBOUND, "support",
        id="force_no|yes|1h-ago-no-answer->inbound",
    )  # fmt: skip
    for r in rule:
        for accept in (True, False):
            yes = "yes" if accept else "no"
            # the caller was dialed, but from another of acme's numbers
            yield pytest.param(
                acme_number(r), campaigns(sale=spring_sale(accept_inbound=accept)),
                [dialed(HOUR, did=ACME_OTHER_DID)],
                INBOUND, "support",
                id=f"{r}|{yes}|never-dialed-from-this-DID->inbound",
            )  # fmt: skip
    for r in rule:
        yield pytest.param(
            acme_number(r), campaigns(), [dialed(8 * DAY)],
            INBOUND, "support",
            id=f"{r}|yes|8-days-ago-window-7-days->inbound",
        )  # fmt: skip
    yield pytest.param(
        acme_number(rule.AS_CAMPAIGN), campaigns(),
        [dialed(HOUR, campaign=WINTER_PROMO)],  # globex dialed from it when it was globex's
        INBOUND, "support",
        id="as_campaign|yes|dialed-by-previous-owner->inbound",
    )  # fmt: skip
    yield pytest.param(
        acme_number(rule.AS_CAMPAIGN),
        campaigns(sale=spring_sale(state=CampaignState.FINISHED)), [dialed(HOUR)],
        INBOUND, "support",
        id="as_campaign|yes|no-answer-campaign-finished->inbound",
    )  # fmt: skip
    yield pytest.param(
        acme_number(inbound=None), campaigns(), [],
        FALLBACK, Fallback.NO_INBOUND_CAMPAIGN,
        id="no-inbound-campaign-bound|yes|never-dialed->no_inbound_campaign",
    )  # fmt: skip
    yield pytest.param(
        service_number(), campaigns(), [dialed(HOUR, did=SERVICE_DID)],
        OUTBOUND, "spring-sale",
        id="service-number|yes|dialed-from-it-1h-ago-no-answer->outbound",
    )  # fmt: skip
    for accept in (True, False):
        yes = "yes" if accept else "no"
        yield pytest.param(
            service_number(), campaigns(sale=spring_sale(accept_inbound=accept)), [],
            FALLBACK, Fallback.SERVICE_NUMBER,
            id=f"service-number|{yes}|never-dialed-from-it->service_number",
        )  # fmt: skip
    for accept in (True, False):
        yes = "yes" if accept else "no"
        for name, history in histories.items():
            yield pytest.param(
                acme_number(status=NumberStatus.DISABLED),
                campaigns(sale=spring_sale(accept_inbound=accept)), history,
                FALLBACK, Fallback.UNKNOWN_NUMBER,
                id=f"disabled-reserved-number|{yes}|{name}->unknown_number",
            )  # fmt: skip
            service_history = [dataclasses.replace(a, did=SERVICE_DID) for a in history]
            yield pytest.param(
                service_number(status=NumberStatus.DISABLED),
                campaigns(sale=spring_sale(accept_inbound=accept)), service_history,
                FALLBACK, Fallback.UNKNOWN_NUMBER,
                id=f"disabled-service-number|{yes}|{name}->unknown_number",
            )  # fmt: skip
    # caller ID "anonymous" is "no caller": no history at all
    for accept in (True, False):
        yes = "yes" if accept else "no"
        for r in rule:
            yield pytest.param(
                acme_number(r), campaigns(sale=spring_sale(accept_inbound=accept)), [],
                INBOUND, "support",
                id=f"anonymous-caller|{r}|{yes}->inbound",
            )  # fmt: skip
        yield pytest.param(
            acme_number(inbound=None), campaigns(sale=spring_sale(accept_inbound=accept)), [],
            FALLBACK, Fallback.NO_INBOUND_CAMPAIGN,
            id=f"anonymous-caller|unbound-number|{yes}->no_inbound_campaign",
        )  # fmt: skip
        yield pytest.param(
            service_number(), campaigns(sale=spring_sale(accept_inbound=accept)), [],
            FALLBACK, Fallback.SERVICE_NUMBER,
            id=f"anonymous-caller|service-number|{yes}->service_number",
        )  # fmt: skip


@pytest.mark.parametrize(("number", "known", "history", "kind", "target"), list(_example_rows()))
def test_examples_table(number, known, history, kind, target):
    decision = decide(number, known, history, NOW, WINDOW)
    assert_route(decision, kind, target)
    if kind is OUTBOUND:
        assert decision.route.attempt == history[0].id


# --------------------------------------------------------------------------------------------
# 2. The other rules of the text
# --------------------------------------------------------------------------------------------


def test_pending_call_still_ringing_routes_outbound():
    """Rule 4 of "Caller ID": the attempt is recorded pending before the call is placed."""
    decision = decide(acme_number(), campaigns(), [dialed(5, Outcome.PENDING)], NOW, WINDOW)
    assert_route(decision, OUTBOUND, "spring-sale")


@pytest.mark.parametrize(
    "outcome", [Outcome.NO_ANSWER, Outcome.BUSY, Outcome.FAILED, Outcome.CONGESTION]
)
def test_unanswered_outcomes_route_outbound(outcome):
    decision = decide(acme_number(), campaigns(), [dialed(HOUR, outcome)], NOW, WINDOW)
    assert_route(decision, OUTBOUND, "spring-sale")
    assert decision.route.attempt == "att-1"


def test_paused_campaign_still_takes_its_callback():
    paused = spring_sale(state=CampaignState.PAUSED)
    decision = decide(
        acme_number(), campaigns(sale=paused), [dialed(HOUR, campaign=paused)], NOW, WINDOW
    )
    assert_route(decision, OUTBOUND, "spring-sale")


def test_latest_attempt_wins_even_when_it_is_not_eligible():
    """An older unanswered call does not count once a newer one was answered."""
    history = [
        dialed(3 * HOUR, Outcome.NO_ANSWER, id="older"),
        dialed(HOUR, Outcome.ANSWERED, id="newer"),
    ]
    for attempts in (history, history[::-1]):
        assert_route(decide(acme_number(), campaigns(), attempts, NOW, WINDOW), INBOUND, "support")


def test_latest_attempt_wins_when_it_is_eligible():
    history = [
        dialed(3 * HOUR, Outcome.ANSWERED, id="older"),
        dialed(HOUR, Outcome.NO_ANSWER, id="newer"),
    ]
    for attempts in (history, history[::-1]):
        decision = decide(acme_number(), campaigns(), attempts, NOW, WINDOW)
        assert_route(decision, OUTBOUND, "spring-sale")
        assert decision.route.attempt == "newer"


def test_latest_attempt_across_campaigns_of_the_owner():
    """The newest call was from a campaign that does not accept inbound: inbound, even though an
    older call from a campaign that does accept it would qualify."""
    autumn = Campaign("autumn-sale", "acme", CampaignKind.OUTBOUND, accept_inbound=False)
    history = [dialed(3 * HOUR, id="spring"), dialed(HOUR, campaign=autumn, id="autumn")]
    decision = decide(acme_number(), campaigns(autumn), history, NOW, WINDOW)
    assert_route(decision, INBOUND, "support")


def test_latest_attempt_of_the_current_owner_wins_over_a_newer_one_of_the_previous_owner():
    history = [
        dialed(2 * HOUR, id="acme-call"),
        dialed(HOUR, campaign=WINTER_PROMO, id="globex-call"),
    ]
    for attempts in (history, history[::-1]):
        decision = decide(acme_number(), campaigns(), attempts, NOW, WINDOW)
        assert_route(decision, OUTBOUND, "spring-sale")
        assert decision.route.attempt == "acme-call"


def test_previous_owner_history_alone_never_reaches_its_campaign_even_when_unbound():
    decision = decide(
        acme_number(inbound=None), campaigns(), [dialed(HOUR, campaign=WINTER_PROMO)], NOW, WINDOW
    )
    assert_route(decision, FALLBACK, Fallback.NO_INBOUND_CAMPAIGN)


def test_previous_owner_inbound_campaign_is_not_reachable():
    """Binding left over from globex (bad data): the bound campaign is not acme's."""
    helpdesk = Campaign("helpdesk", "globex", CampaignKind.INBOUND)
    decision = decide(acme_number(inbound="helpdesk"), campaigns(helpdesk), [], NOW, WINDOW)
    assert_route(decision, FALLBACK, Fallback.NO_INBOUND_CAMPAIGN)


def test_attempts_from_another_did_are_ignored():
    history = [dialed(HOUR, did=ACME_OTHER_DID)]
    assert_route(decide(acme_number(), campaigns(), history, NOW, WINDOW), INBOUND, "support")


def test_attempt_in_the_future_is_ignored():
    history = [dialed(-MINUTE)]  # one minute after now: clock skew or bad data
    assert_route(decide(acme_number(), campaigns(), history, NOW, WINDOW), INBOUND, "support")


def test_attempt_with_unknown_campaign_is_ignored():
    ghost = Attempt("att-x", "deleted-campaign", "acme", ACME_DID, CALLER, NOW - HOUR)
    assert_route(decide(acme_number(), campaigns(), [ghost], NOW, WINDOW), INBOUND, "support")


def test_window_edges():
    just_inside = [dialed(WINDOW - MINUTE)]
    just_outside = [dialed(WINDOW + MINUTE)]
    inside = decide(acme_number(), campaigns(), just_inside, NOW, WINDOW)
    outside = decide(acme_number(), campaigns(), just_outside, NOW, WINDOW)
    assert_route(inside, OUTBOUND, "spring-sale")
    assert_route(outside, INBOUND, "support")


def test_the_window_includes_both_of_its_ends():
    exactly_window_ago, exactly_now = [dialed(WINDOW)], [dialed(0)]
    assert exactly_window_ago[0].at == NOW - WINDOW
    assert_route(decide(acme_number(), campaigns(), exactly_window_ago, NOW, WINDOW), OUTBOUND,
                 "spring-sale")  # fmt: skip
    assert_route(decide(acme_number(), campaigns(), exactly_now, NOW, WINDOW), OUTBOUND,
                 "spring-sale")  # fmt: skip
    a_moment_before = [dialed(WINDOW + 0.001)]
    assert_route(decide(acme_number(), campaigns(), a_moment_before, NOW, WINDOW), INBOUND,
                 "support")  # fmt: skip


def _code_cases():
    finished = campaigns(sale=spring_sale(state=CampaignState.FINISHED))
    unreserved = Number("74959999999", Pool.RESERVABLE)
    yield None, campaigns(), [], "unknown_did"
    yield acme_number(status=NumberStatus.DISABLED), campaigns(), [dialed(HOUR)], "disabled"
    yield unreserved, campaigns(), [], "not_reserved"
    yield acme_number(), campaigns(), [dialed(HOUR)], "first_callback"
    yield acme_number(), campaigns(), [], "no_recent_call"
    yield acme_number(CallbackRule.FORCE_NO), campaigns(), [dialed(HOUR)], "not_accepting_inbound"
    yield acme_number(), campaigns(), [dialed(HOUR, Outcome.ANSWERED)], "answered"
    yield acme_number(), campaigns(), [dialed(HOUR, callbacks=1)], "already_called_back"
    yield acme_number(), finished, [dialed(HOUR)], "campaign_finished"
    yield service_number(), campaigns(), [], "no_recent_call"


@pytest.mark.parametrize(("number", "known", "history", "code"), list(_code_cases()))
def test_every_decision_carries_its_reason_as_a_stable_code(number, known, history, code):
    assert decide(number, known, history, NOW, WINDOW).code == code


def test_the_route_without_the_store_has_its_code():
    assert fallback_without_store(acme_number(), campaigns()).code == "store_unavailable"
    assert fallback_without_store(None, campaigns()).code == "store_unavailable"


def test_window_is_configurable_and_defaults_to_seven_days():
    two_days_ago = [dialed(2 * DAY)]
    assert DEFAULT_CALLBACK_WINDOW == 7 * DAY
    assert_route(decide(acme_number(), campaigns(), two_days_ago, NOW), OUTBOUND, "spring-sale")
    assert_route(decide(acme_number(), campaigns(), two_days_ago, NOW, DAY), INBOUND, "support")


def test_history_may_be_any_iterable():
    decision = decide(acme_number(), campaigns(), iter([dialed(HOUR)]), NOW, WINDOW)
    assert_route(decision, OUTBOUND, "spring-sale")


def test_bound_inbound_campaign_finished_gives_no_inbound_campaign():
    done = Campaign("support", "acme", CampaignKind.INBOUND, state=CampaignState.FINISHED)
    decision = decide(acme_number(), campaigns(done), [], NOW, WINDOW)
    assert_route(decision, FALLBACK, Fallback.NO_INBOUND_CAMPAIGN)


def test_bound_inbound_campaign_of_another_account_gives_no_inbound_campaign():
    theirs = Campaign("support", "globex", CampaignKind.INBOUND)
    decision = decide(acme_number(), campaigns(theirs), [dialed(HOUR, callbacks=1)], NOW, WINDOW)
    assert_route(decision, FALLBACK, Fallback.NO_INBOUND_CAMPAIGN)


@pytest.mark.parametrize("bound", ["spring-sale", "no-such-campaign"])
def test_bound_campaign_that_is_not_a_known_inbound_one_gives_no_inbound_campaign(bound):
    decision = decide(acme_number(inbound=bound), campaigns(), [], NOW, WINDOW)
    assert_route(decision, FALLBACK, Fallback.NO_INBOUND_CAMPAIGN)


def test_paused_bound_inbound_campaign_still_takes_calls():
    paused = Campaign("support", "acme", CampaignKind.INBOUND, state=CampaignState.PAUSED)
    assert_route(decide(acme_number(), campaigns(paused), [], NOW, WINDOW), INBOUND, "support")


def test_reservable_number_without_owner_is_unknown():
    stock = Number(ACME_DID, Pool.RESERVABLE, inbound_campaign="support")
    decision = decide(stock, campaigns(), [dialed(HOUR)], NOW, WINDOW)
    assert_route(decision, FALLBACK, Fallback.UNKNOWN_NUMBER)


def test_unknown_did_is_unknown_number():
    decision = decide(None, campaigns(), [dialed(HOUR)], NOW, WINDOW)
    assert_route(decision, FALLBACK, Fallback.UNKNOWN_NUMBER)


def test_service_number_takes_callbacks_of_any_account():
    history = [dialed(HOUR, campaign=FIRST_CALL, did=SERVICE_DID)]
    decision = decide(service_number(), campaigns(), history, NOW, WINDOW)
    assert_route(decision, OUTBOUND, "first-call")


def test_service_number_refused_callback_goes_to_service_number_fallback():
    history = [dialed(HOUR, Outcome.ANSWERED, did=SERVICE_DID)]
    decision = decide(service_number(), campaigns(), history, NOW, WINDOW)
    assert_route(decision, FALLBACK, Fallback.SERVICE_NUMBER)


@pytest.mark.parametrize("stray_rule", RULES)
@pytest.mark.parametrize("accept", YES_NO)
def test_service_number_has_no_rule_it_follows_the_campaign(stray_rule, accept):
    """A rule stored on a service number (bad data) is ignored: it behaves as `as_campaign`."""
    number = dataclasses.replace(service_number(), callback_rule=stray_rule)
    known = campaigns(sale=spring_sale(accept_inbound=accept))
    decision = decide(number, known, [dialed(HOUR, did=SERVICE_DID)], NOW, WINDOW)
    if accept:
        assert_route(decision, OUTBOUND, "spring-sale")
    else:
        assert_route(decision, FALLBACK, Fallback.SERVICE_NUMBER)


def test_service_number_ignores_a_stray_inbound_binding():
    number = dataclasses.replace(service_number(), inbound_campaign="support")
    decision = decide(number, campaigns(), [], NOW, WINDOW)
    assert_route(decision, FALLBACK, Fallback.SERVICE_NUMBER)


@pytest.mark.parametrize(
    ("rule", "accept", "expected"),
    [
        (CallbackRule.FORCE_YES, True, True),
        (CallbackRule.FORCE_YES, False, True),
        (CallbackRule.AS_CAMPAIGN, True, True),
        (CallbackRule.AS_CAMPAIGN, False, False),
        (CallbackRule.FORCE_NO, True, False),
        (CallbackRule.FORCE_NO, False, False),
    ],
)
def test_effective_accept_inbound(rule, accept, expected):
    assert accepts_inbound(acme_number(rule), spring_sale(accept_inbound=accept)) is expected


def test_force_yes_forces_only_the_setting_not_the_other_conditions():
    number = acme_number(CallbackRule.FORCE_YES)
    off = campaigns(sale=spring_sale(accept_inbound=False))
    for history in ([dialed(HOUR, Outcome.ANSWERED)], [dialed(HOUR, callbacks=1)]):
        assert_route(decide(number, off, history, NOW, WINDOW), INBOUND, "support")
    finished = spring_sale(accept_inbound=False, state=CampaignState.FINISHED)
    decision = decide(number, campaigns(sale=finished), [dialed(HOUR)], NOW, WINDOW)
    assert_route(decision, INBOUND, "support")


def test_latest_attempt_helper():
    acme = acme_number()
    assert latest_attempt(acme, campaigns(), [], NOW, WINDOW) is None
    history = [
        dialed(3 * HOUR, id="old"),
        dialed(HOUR, campaign=WINTER_PROMO, id="previous-owner"),
        dialed(2 * HOUR, id="newest-of-acme"),
        dialed(30 * MINUTE, did=ACME_OTHER_DID, id="other-did"),
        dialed(-MINUTE, id="future"),
        dialed(8 * DAY, id="too-old"),
    ]
    assert latest_attempt(acme, campaigns(), history, NOW, WINDOW).id == "newest-of-acme"


# fallback_without_store: rule 6, the store cannot be read


def test_store_down_reserved_number_goes_to_its_bound_inbound_campaign():
    decision = fallback_without_store(acme_number(), campaigns())
    assert_route(decision, INBOUND, "support")


@pytest.mark.parametrize(
    ("number", "known"),
    [
        pytest.param(None, campaigns(), id="unknown-DID"),
        pytest.param(acme_number(inbound=None), campaigns(), id="no-binding"),
        pytest.param(acme_number(status=NumberStatus.DISABLED), campaigns(), id="disabled"),
        pytest.param(service_number(), campaigns(), id="service-number"),
        pytest.param(
            Number(ACME_DID, Pool.RESERVABLE, inbound_campaign="support"), campaigns(),
            id="reservable-without-owner",
        ),
        pytest.param(
            acme_number(),
            campaigns(dataclasses.replace(SUPPORT, state=CampaignState.FINISHED)),
            id="bound-campaign-finished",
        ),
        pytest.param(
            acme_number(), campaigns(Campaign("support", "globex", CampaignKind.INBOUND)),
            id="bound-campaign-of-another-account",
        ),
        pytest.param(acme_number(), {}, id="bound-campaign-not-known-without-store"),
    ],
)  # fmt: skip
def test_store_down_otherwise_engine_error(number, known):
    assert_route(fallback_without_store(number, known), FALLBACK, Fallback.ENGINE_ERROR)


# --------------------------------------------------------------------------------------------
# 3. Invariants over generated inputs
# --------------------------------------------------------------------------------------------

ACCOUNTS = ["acme", "globex", "initech"]
CAMPAIGN_IDS = ["c1", "c2", "c3", "c4", "c5", "c6"]
UNKNOWN_CAMPAIGN = "deleted"  # referenced by attempts and bindings, never in the campaigns dict
DIDS = ["74951110001", "74951110002"]


@dataclass(frozen=True)
class Situation:
    number: Number | None
    campaigns: dict[str, Campaign]
    attempts: list[Attempt]
    now: float
    window: float

    def decide(self, attempts: list[Attempt] | None = None) -> Decision:
        history = self.attempts if attempts is None else attempts
        return decide(self.number, self.campaigns, history, self.now, self.window)


numbers = st.builds(
    Number,
    did=st.sampled_from(DIDS),
    pool=st.sampled_from(Pool),
    # weighted towards the interesting case: an active number with an owner
    status=st.sampled_from([NumberStatus.ACTIVE] * 3 + [NumberStatus.DISABLED]),
    owner=st.sampled_from([None, *ACCOUNTS]),
    callback_rule=st.sampled_from(CallbackRule),
    inbound_campaign=st.none() | st.sampled_from([*CAMPAIGN_IDS, UNKNOWN_CAMPAIGN]),
)


@st.composite
def situations(
    draw, number=numbers, consistent_accounts: bool = False, tied_times: bool = False
) -> Situation:
    """A number, the campaigns of several accounts, and a caller's history with it.

    Accounts, DIDs and campaign ids are drawn from small sets, weighted towards the number's
    own, so that owners, previous owners, other DIDs and unknown campaigns all meet often and
    every kind of route comes out.
    With `consistent_accounts` every attempt's account is its campaign's account (as the
    store writes them); otherwise it may be any account. With `tied_times` the attempts are
    all one or two hours old, so that several are often "the latest".
    """
    num = draw(number)
    owner = num.owner if num is not None and num.owner else "acme"
    did = num.did if num is not None else DIDS[0]
    states = st.sampled_from(CampaignState)
    any_campaign = st.builds(
        Campaign,
        id=st.sampled_from(CAMPAIGN_IDS),
        account=st.sampled_from([owner, *ACCOUNTS]),
        kind=st.sampled_from(CampaignKind),
        accept_inbound=st.booleans(),
        state=states,
    )
    known = {
        c.id: c
        for c in draw(
            st.lists(any_campaign, min_size=1, max_size=len(CAMPAIGN_IDS), unique_by=lambda c: c.id)
        )
    }
    # often, the campaigns a number's owner typically has: one dialing, one to bind
    if draw(st.integers(0, 3)):
        accept = draw(st.sampled_from([True, True, False]))
        known["own-sale"] = Campaign("own-sale", owner, CampaignKind.OUTBOUND, accept, draw(states))
    if draw(st.booleans()):
        known["own-help"] = Campaign("own-help", owner, CampaignKind.INBOUND, state=draw(states))
    if num is not None and num.inbound_campaign is not None:  # bound to a campaign it may know
        num = dataclasses.replace(
            num, inbound_campaign=draw(st.sampled_from([*known, UNKNOWN_CAMPAIGN, "own-help"]))
        )
    now = draw(st.floats(min_value=0, max_value=4e9))
    window = draw(
        st.sampled_from([DEFAULT_CALLBACK_WINDOW, DAY]) | st.floats(min_value=0, max_value=30 * DAY)
    )
    if tied_times:
        window = DEFAULT_CALLBACK_WINDOW
        offsets = st.sampled_from([-HOUR, -2 * HOUR])
    else:  # times anywhere around the window, and exactly on its edges
        offsets = (
            st.floats(min_value=-window, max_value=0)
            | st.floats(min_value=-(2 * window + DAY), max_value=DAY)
            | st.sampled_from([0.0, -window, -HOUR, 1.0])
        )
    attempts = []
    for i in range(draw(st.integers(min_value=0, max_value=5))):
        # "own-sale" twice more: the caller was most likely dialed by the owner's campaign
        campaign_id = draw(st.sampled_from([*known, UNKNOWN_CAMPAIGN, "own-sale", "own-sale"]))
        campaign = known.get(campaign_id)
        if campaign is not None and (consistent_accounts or draw(st.integers(0, 5))):
            account = campaign.account
        else:
            account = draw(st.sampled_from(ACCOUNTS))
        attempts.append(
            Attempt(
                id=f"a{i}",
                campaign=campaign_id,
                account=account,
                did=draw(st.sampled_from([did, did, *DIDS])),
                callee=CALLER,
                at=now + draw(offsets),
                outcome=draw(st.sampled_from(Outcome)),
                callbacks=draw(st.sampled_from([0, 0, 0, 1, 2])),
            )
        )
    return Situation(num, known, attempts, now, window)


# numbers that can route a call: active, and owned unless in the service pool
routable_numbers = numbers.map(
    lambda n: dataclasses.replace(
        n,
        status=NumberStatus.ACTIVE,
        owner=n.owner or ("acme" if n.pool is Pool.RESERVABLE else None),
    )
)
disabled_numbers = numbers.map(lambda n: dataclasses.replace(n, status=NumberStatus.DISABLED))
active_reserved_numbers = routable_numbers.map(
    lambda n: dataclasses.replace(n, pool=Pool.RESERVABLE, owner=n.owner or "acme")
)
force_no_numbers = active_reserved_numbers.map(
    lambda n: dataclasses.replace(n, callback_rule=CallbackRule.FORCE_NO)
)


def effective_accept(number: Number, campaign: Campaign) -> bool:
    """Rule 3, written out again from the text."""
    if number.pool is Pool.SERVICE or number.callback_rule is CallbackRule.AS_CAMPAIGN:
        return campaign.accept_inbound
    return number.callback_rule is CallbackRule.FORCE_YES


@settings(max_examples=400)
@given(situations(st.none() | numbers), st.none() | st.tuples(st.floats(), st.floats()))
def test_decide_is_total_and_routes_are_consistent(s, odd_clock):
    """Also with any `now` and `window` at all: NaN, infinities, negative."""
    if odd_clock is not None:
        s = dataclasses.replace(s, now=odd_clock[0], window=odd_clock[1])
    decision = s.decide()
    assert isinstance(decision, Decision)
    assert isinstance(decision.reason, str) and decision.reason.strip()
    route = decision.route
    if route.kind is OUTBOUND:
        assert route.campaign is not None and route.attempt is not None
        assert route.fallback is None
    elif route.kind is INBOUND:
        assert route.campaign is not None
        assert route.fallback is None and route.attempt is None
    else:
        assert route.kind is FALLBACK
        assert route.fallback is not None
        assert route.campaign is None and route.attempt is None


@settings(max_examples=400)
@given(situations(routable_numbers))
def test_routed_campaigns_belong_to_the_current_owner(s):
    route = s.decide().route
    number = s.number
    if route.kind is FALLBACK:
        return
    campaign = s.campaigns[route.campaign]
    if route.kind is OUTBOUND:
        assert campaign.kind is CampaignKind.OUTBOUND
    else:
        assert campaign.kind is CampaignKind.INBOUND
        assert campaign.state is not CampaignState.FINISHED
        assert number.is_reserved and route.campaign == number.inbound_campaign
    if number.is_reserved:
        assert campaign.account == number.owner


@settings(max_examples=300)
@given(situations(number=active_reserved_numbers))
def test_history_of_other_accounts_never_routes_outbound(s):
    """Only previous owners (any account but the current one) ever dialed from this DID."""
    foreign = {cid: c for cid, c in s.campaigns.items() if c.account != s.number.owner}
    history = [
        dataclasses.replace(a, did=s.number.did, account=foreign[a.campaign].account)
        for a in s.attempts
        if a.campaign in foreign
    ]
    route = s.decide(history).route
    assert route.kind is not OUTBOUND
    if route.kind is INBOUND:
        assert s.campaigns[route.campaign].account == s.number.owner


@given(situations(disabled_numbers))
def test_disabled_number_never_reaches_a_campaign(s):
    decision = s.decide()
    assert decision.route == Route.to_fallback(Fallback.UNKNOWN_NUMBER)


@given(situations(number=st.none()))
def test_unknown_did_never_reaches_a_campaign(s):
    decision = s.decide()
    assert decision.route == Route.to_fallback(Fallback.UNKNOWN_NUMBER)


@settings(max_examples=400)
@given(situations(routable_numbers))
def test_outbound_only_for_a_first_callback_of_an_unanswered_recent_call(s):
    route = s.decide().route
    if route.kind is not OUTBOUND:
        return
    [attempt] = [a for a in s.attempts if a.id == route.attempt]
    campaign = s.campaigns[attempt.campaign]
    assert route.campaign == campaign.id
    assert attempt.did == s.number.did
    assert s.now - s.window <= attempt.at <= s.now
    assert attempt.outcome is not Outcome.ANSWERED
    assert attempt.callbacks == 0
    assert campaign.state is not CampaignState.FINISHED
    assert effective_accept(s.number, campaign)
    if s.number.is_reserved:
        assert s.number.callback_rule is not CallbackRule.FORCE_NO


@given(situations(force_no_numbers))
def test_force_no_never_routes_outbound(s):
    assert s.decide().route.kind is not OUTBOUND


@settings(max_examples=400)
@given(situations(routable_numbers))
def test_at_most_one_callback_is_claimed(s):
    """After an outbound route the engine claims it (callbacks + 1): the next call from the same
    caller no longer goes to the outbound campaign."""
    route = s.decide().route
    if route.kind is not OUTBOUND:
        return
    claimed = [
        dataclasses.replace(a, callbacks=a.callbacks + 1) if a.id == route.attempt else a
        for a in s.attempts
    ]
    assert s.decide(claimed).route.kind is not OUTBOUND


@settings(max_examples=300)
@given(situations(routable_numbers) | situations(routable_numbers, tied_times=True), st.randoms())
def test_order_of_the_history_does_not_matter(s, random):
    shuffled = list(s.attempts)
    random.shuffle(shuffled)
    assert s.decide(shuffled) == s.decide()
    assert s.decide(s.attempts[::-1]) == s.decide()


def rules_reading(s: Situation) -> set[Route]:
    """The routes routing-rules.md allows, written straight from its steps 1-5. A set because
    two attempts at the very same instant are equally "latest"."""
    number, known = s.number, s.campaigns
    if number is None or number.status is NumberStatus.DISABLED:
        return {Route.to_fallback(Fallback.UNKNOWN_NUMBER)}
    if number.pool is Pool.RESERVABLE and number.owner is None:
        return {Route.to_fallback(Fallback.UNKNOWN_NUMBER)}

    if number.pool is Pool.SERVICE:
        otherwise = Route.to_fallback(Fallback.SERVICE_NUMBER)
    else:
        bound = known.get(number.inbound_campaign or "")
        usable = (
            bound is not None
            and bound.kind is CampaignKind.INBOUND
            and bound.account == number.owner
            and bound.state is not CampaignState.FINISHED
        )
        otherwise = (
            Route.inbound(bound.id) if usable else Route.to_fallback(Fallback.NO_INBOUND_CAMPAIGN)
        )

    def counts(a: Attempt) -> bool:  # step 2
        c = known.get(a.campaign)
        return (
            a.did == number.did
            and s.now - s.window <= a.at <= s.now
            and c is not None
            and c.kind is CampaignKind.OUTBOUND
            and (number.pool is Pool.SERVICE or c.account == number.owner)
        )

    recent = [a for a in s.attempts if counts(a)]
    if not recent:
        return {otherwise}
    newest = max(a.at for a in recent)
    allowed = set()
    for a in (a for a in recent if a.at == newest):
        c = known[a.campaign]
        first_callback = (  # step 4
            effective_accept(number, c)
            and a.outcome is not Outcome.ANSWERED
            and a.callbacks == 0
            and c.state is not CampaignState.FINISHED
        )
        allowed.add(Route.outbound(c.id, a.id) if first_callback else otherwise)
    return allowed


@settings(max_examples=500)
@given(situations(st.none() | numbers, consistent_accounts=True))
def test_decision_agrees_with_the_rules_text(s):
    """Also the converse of the invariants above: when the rules say outbound, it is outbound."""
    assert s.decide().route in rules_reading(s)
