"""Campaign scenarios as data (zvonok_agi.routing.scenario): the document people write, its
checks, the stored form the engine reads back, and the variables the dialplan gets."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_dialplan import DIALPLAN

from asterisk_dialplan import parse, posix_ere
from zvonok_agi.agi import variables as var
from zvonok_agi.routing import scenario as scenarios
from zvonok_agi.routing.model import Campaign, CampaignKind, Operators, Scenario
from zvonok_agi.store.routing_data import BadChange, decode, encode

recordings = st.from_regex(scenarios.RECORDING, fullmatch=True)
names = st.from_regex(scenarios.ENDPOINT, fullmatch=True)
operators = st.builds(
    Operators,
    queue=st.none() | names,
    endpoints=st.lists(names, min_size=1, max_size=scenarios.MAX_ENDPOINTS, unique=True).map(tuple),
    ring_timeout=st.integers(scenarios.MIN_RING_TIMEOUT, scenarios.MAX_RING_TIMEOUT),
    digit=st.none() | st.sampled_from(scenarios.DIGITS),
).map(lambda o: o if o.queue is None else Operators(o.queue, (), o.ring_timeout, o.digit))


@st.composite
def any_scenario(draw: st.DrawFn) -> Scenario:
    who = draw(st.none() | operators)
    play = draw(recordings if who is None else st.none() | recordings)
    no_answer = draw(st.none() | recordings) if who is not None else None
    return Scenario(play, who, no_answer)


@given(any_scenario())
def test_the_document_and_the_stored_form_give_the_scenario_back(s: Scenario) -> None:
    assert scenarios.parse(scenarios.document(s)) == s
    assert scenarios.from_stored(scenarios.stored(s)) == s


@given(any_scenario())
def test_a_campaign_keeps_its_scenario_in_the_routing_data(s: Scenario) -> None:
    campaign = Campaign("c-1", "acme", CampaignKind.INBOUND, scenario=s)
    assert decode("campaign", "c-1", encode(campaign, 7)) == campaign


def test_a_campaign_without_one_is_stored_as_before() -> None:
    # An engine of the release before reads it as it always did: six fields.
    campaign = Campaign("c-1", "acme", CampaignKind.OUTBOUND, caller_id="74951110001")
    assert encode(campaign, 3) == '[3,"acme","outbound",0,"running","74951110001"]'


@pytest.mark.parametrize(
    "stored",
    [
        '[3,"acme","inbound",0,"running",null,["../x",null,""]]',
        '[3,"acme","inbound",0,"running",null,["x",["","sales,,,,1",[],20],""]]',
        '[3,"acme","inbound",0,"running",null,["",["","",["op 1"],20],""]]',
        '[3,"acme","inbound",0,"running",null,["",["","sales",[],9999],""]]',
        '[3,"acme","inbound",0,"running",null,["x"]]',
        '[3,"acme","inbound",0,"running",null,["x",null,""],1]',
    ],
)
def test_a_stored_scenario_is_checked_again_when_read(stored: str) -> None:
    # Written by hand or by another path into Redis: refused before any call sees it.
    with pytest.raises(BadChange):
        decode("campaign", "c-1", stored)


def test_for_kind_gives_an_outbound_campaign_its_digit_and_refuses_the_rest() -> None:
    document = {"play": "promo", "operators": {"queue": "sales"}}
    outbound = scenarios.for_kind(scenarios.parse(document), CampaignKind.OUTBOUND)
    assert outbound.operators == Operators("sales", (), 20, "1")
    inbound = scenarios.for_kind(scenarios.parse(document), CampaignKind.INBOUND)
    assert inbound.operators == Operators("sales", (), 20, None)
    with pytest.raises(scenarios.ScenarioError, match=r"^scenario\.play: an outbound"):
        scenarios.for_kind(scenarios.parse({"operators": {"queue": "q"}}), CampaignKind.OUTBOUND)
    with pytest.raises(scenarios.ScenarioError, match=r"^scenario\.operators\.digit: "):
        digit = {"operators": {"queue": "q", "digit": "1"}}
        scenarios.for_kind(scenarios.parse(digit), CampaignKind.INBOUND)


# The dialplan's own checks of each variable: REGEX("<pattern>" ${ZV_...}).
CHECKS = re.compile(r'REGEX\("(\^[^"$]+\$)" \$\{(ZV_\w+)\}\)')


def dialplan_patterns() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for steps in parse(DIALPLAN.read_text(encoding="utf-8")).values():
        for step in steps:
            for pattern, name in CHECKS.findall(step.data):
                found.setdefault(name, set()).add(posix_ere(pattern))
    return found


PATTERNS = dialplan_patterns()


def test_the_dialplan_checks_every_scenario_variable() -> None:
    assert set(var.SCENARIO_VARIABLES) - {var.SCENARIO_CONTEXT} <= set(PATTERNS)


@given(any_scenario(), st.sampled_from(["zvonok-scenario-outbound", "zvonok-scenario-inbound"]))
def test_every_scenario_the_checks_accept_passes_the_dialplans_checks(
    s: Scenario, context: str
) -> None:
    for name, value in var.scenario_values(s, context):
        assert var.MSET_SAFE.fullmatch(value), (name, value)  # one MSet round trip
        if value and name in PATTERNS:
            assert all(re.search(p, value) for p in PATTERNS[name]), (name, value)
