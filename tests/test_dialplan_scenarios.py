"""Campaign scenarios in the shipped dialplan (docs/routing.md, "Scenarios"): the engine's
variables, set through the recorded AGI exchange, walked through the generic contexts by the
dialplan model, whose applications leave what a real Asterisk 22 left
(tests/fixtures/asterisk/dialplan_dial_playback_outcomes.txt).

Every path ends in the campaign's branches: the operators, the no-answer recording, or a hang-up;
never an application refusing its arguments, whatever the variables hold."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_dialplan import DIDS, MAX_DECIDED_PRIORITIES, call, dialplan, engine, ran, router, sets

from asterisk_dialplan import Call, Jumped, Outside, Step
from zvonok_agi.agi import variables as var
from zvonok_agi.agi.inbound import MAX_REASON
from zvonok_agi.config import DialplanSettings
from zvonok_agi.outbound.originator import ROUTE_CONTEXT
from zvonok_agi.routing import scenario as scenarios
from zvonok_agi.routing.decision import Decision
from zvonok_agi.routing.model import CampaignKind, Operators, Route, Scenario

__all__ = ["dialplan"]  # the fixture, shared with test_dialplan

SCENARIO_CONTEXTS = ("zvonok-scenario-outbound", "zvonok-scenario-inbound")
NEW_CAMPAIGN = "c-0a1b2c3d4e"  # made through the API: no context of its own in the dialplan
RECORDINGS = {"promo-may", "hello", "sorry-busy"}


def scenario(kind: CampaignKind, **document: object) -> Scenario:
    return scenarios.for_kind(scenarios.parse(document), kind)


def inbound(s: Scenario, campaign: str = NEW_CAMPAIGN) -> Decision:
    return Decision(Route.inbound(campaign, s), f"inbound campaign {campaign}")


def callback(s: Scenario, campaign: str = NEW_CAMPAIGN) -> Decision:
    return Decision(Route.outbound(campaign, "0f3a", s), f"first callback to {campaign}")


def run(
    dialplan: dict[str, list[Step]], decision: Decision, outside: Outside, batch: bool = True
) -> Call:
    result = call(dialplan, engine(decision, batch=batch), DIDS[0], outside=outside)
    assert result.errors == [], result.errors
    return result


def to_scenario(result: Call) -> int:
    """Priorities up to the jump into a scenario context, the AGI and that jump included."""
    first = next(i for i, step in enumerate(result.ran) if step.context in SCENARIO_CONTEXTS)
    return first


QUEUE = scenario(
    CampaignKind.INBOUND,
    play="hello",
    operators={"queue": "sales", "ring_timeout": 30},
    no_answer={"play": "sorry-busy"},
)
ENDPOINTS = scenario(
    CampaignKind.INBOUND,
    operators={"endpoints": ["op-1", "op-2"]},
    no_answer={"play": "sorry-busy"},
)

# (scenario, what is out there) -> (recordings heard, rang, how it ended)
INBOUND_CASES = {
    "queue answers": (
        QUEUE,
        Outside(RECORDINGS, queues={"sales": "answer"}),
        (["hello"], ["sales"], "the bridged call ended"),
    ),
    "queue: nobody answers": (
        QUEUE,
        Outside(RECORDINGS, queues={"sales": "noanswer"}),
        (["hello", "sorry-busy"], ["sales"], "Hangup()"),
    ),
    "queue: nobody logged in": (
        QUEUE,
        Outside(RECORDINGS, queues={"sales": "joinempty"}),
        (["hello", "sorry-busy"], ["sales"], "Hangup()"),
    ),
    "queue missing at run time": (
        QUEUE,
        Outside(RECORDINGS),
        (["hello", "sorry-busy"], [], "Hangup()"),
    ),
    "greeting missing": (
        QUEUE,
        Outside({"sorry-busy"}, queues={"sales": "answer"}),
        ([], ["sales"], "the bridged call ended"),
    ),
    "an endpoint answers": (
        ENDPOINTS,
        Outside(RECORDINGS, endpoints={"op-1": "noanswer", "op-2": "answer"}),
        ([], ["op-1", "op-2"], "the bridged call ended"),
    ),
    "endpoints ring out": (
        ENDPOINTS,
        Outside(RECORDINGS, endpoints={"op-1": "noanswer", "op-2": "busy"}),
        (["sorry-busy"], ["op-1", "op-2"], "Hangup()"),
    ),
    "endpoints unknown to Asterisk": (
        ENDPOINTS,
        Outside(RECORDINGS),
        (["sorry-busy"], ["op-1", "op-2"], "Hangup()"),
    ),
    "no no-answer recording": (
        replace(ENDPOINTS, no_answer_play=None),
        Outside(RECORDINGS, endpoints={"op-1": "busy", "op-2": "busy"}),
        ([], ["op-1", "op-2"], "Hangup()"),
    ),
    "recording only": (
        scenario(CampaignKind.INBOUND, play="hello"),
        Outside(RECORDINGS),
        (["hello"], [], "Hangup()"),
    ),
}


@pytest.mark.parametrize("batch", [True, False], ids=["mset", "one-by-one"])
@pytest.mark.parametrize("case", INBOUND_CASES)
def test_an_inbound_campaign_without_a_context_runs_its_scenario(
    dialplan: dict[str, list[Step]], case: str, batch: bool
) -> None:
    s, outside, (played, rang, ended) = INBOUND_CASES[case]
    result = run(dialplan, inbound(s), outside, batch)
    assert (result.played, result.rang, result.hung_up) == (played, rang, ended), ran(result)
    assert result.ran[to_scenario(result)].context == "zvonok-scenario-inbound"
    assert to_scenario(result) <= MAX_DECIDED_PRIORITIES, ran(result)
    apps = [app for app, _ in result.applications]
    if "Queue" in apps:  # Queue() does not answer the call by itself
        assert "Answer" in apps[: apps.index("Queue")]


PRESS_1 = scenario(
    CampaignKind.OUTBOUND,
    play="promo-may",
    operators={"queue": "sales"},
    no_answer={"play": "sorry-busy"},
)
OUTBOUND_CASES = {
    "presses 1: the operators": ("1", {"promo-may"}, (["promo-may"], ["sales"])),
    "presses 2: hangs up": ("2", {"promo-may"}, (["promo-may"], [])),
    "presses nothing": ("", {"promo-may"}, (["promo-may"], [])),
    "recording missing: no prompt, no operators": ("1", set(), ([], [])),
}


@pytest.mark.parametrize("case", OUTBOUND_CASES)
def test_a_callback_to_an_outbound_campaign_hears_it_and_may_press_for_an_operator(
    dialplan: dict[str, list[Step]], case: str
) -> None:
    presses, recordings, (played, rang) = OUTBOUND_CASES[case]
    outside = Outside(recordings, queues={"sales": "answer"}, presses=presses)
    result = run(dialplan, callback(PRESS_1), outside)
    assert (result.played, result.rang) == (played, rang), ran(result)
    assert result.ran[to_scenario(result)].context == "zvonok-scenario-outbound"
    assert to_scenario(result) <= MAX_DECIDED_PRIORITIES


def test_a_recording_alone_is_played_once_and_the_call_ends(
    dialplan: dict[str, list[Step]],
) -> None:
    result = run(
        dialplan,
        callback(scenario(CampaignKind.OUTBOUND, play="promo-may")),
        Outside(RECORDINGS, presses="1"),
    )
    assert (result.played, result.rang, result.hung_up) == (["promo-may"], [], "Hangup()")
    assert [app for app, _ in result.applications] == ["Playback", "Hangup"]


def test_an_answered_outbound_call_takes_the_same_way(dialplan: dict[str, list[Step]]) -> None:
    # The dialer's Originate enters zvonok-route with the variables a decision sets.
    channel = {
        var.ROUTE: "outbound",
        var.CAMPAIGN: NEW_CAMPAIGN,
        var.TARGET_CONTEXT: f"zvonok-outbound-{NEW_CAMPAIGN}",
        var.TARGET_EXTEN: "s",
        **dict(var.scenario_values(PRESS_1, DialplanSettings().outbound_scenario_context)),
        var.DECIDED: "1",
    }
    outside = Outside(RECORDINGS, queues={"sales": "noanswer"}, presses="1")
    result = Call(dict(dialplan), channel, {}, sets(), outside=outside)
    result.run(ROUTE_CONTEXT, "s", set(dialplan))
    assert result.errors == []
    assert (result.played, result.rang) == (["promo-may", "sorry-busy"], ["sales"])


@pytest.mark.parametrize(
    ("decision", "own"),
    [
        (inbound(QUEUE, "support"), "zvonok-inbound-support"),
        (callback(PRESS_1, "spring-sale"), "zvonok-outbound-spring-sale"),
    ],
    ids=["inbound", "callback"],
)
def test_a_campaigns_own_context_overrides_its_scenario(
    dialplan: dict[str, list[Step]], decision: Decision, own: str
) -> None:
    result = run(dialplan, decision, Outside(RECORDINGS, queues={"sales": "answer"}))
    assert result.landed == Jumped(own, "s", 1)
    assert result.played == result.rang == []


def test_without_a_scenario_or_a_context_the_call_gets_engine_error(
    dialplan: dict[str, list[Step]],
) -> None:
    result = run(dialplan, Decision(Route.inbound(NEW_CAMPAIGN), "inbound"), Outside())
    assert result.landed == Jumped("zvonok-fallback-engine_error", "s", 1)


# Values no engine of ours sets (its checks refuse them), as a buggy or hostile one would: each
# reaches no application, or only the branch that plays nothing and hangs up.
HOSTILE = {
    var.PLAY: ["../../etc/passwd", "/tmp/x", "a,b", "a&b", "x)", "hello,,noanswer", "${EVIL}", ""],
    var.NO_ANSWER_PLAY: ["../x", "a,b", "x)"],
    var.QUEUE: ["sales,,,,1", "sales)", "a b", "sales,t", "../q", "s&t"],
    var.DIAL: [
        "PJSIP/op-1,10,U(evil)",
        "Local/100@default",
        "PJSIP/op-1@carrier",
        "PJSIP/op 1",
        "PJSIP/op-1&Local/x@default",
        "PJSIP/../op",
        "PJSIP/op-1)",
    ],
    var.RING_TIMEOUT: ["0", "1000", "20,x", "-1", "20)", "1e3"],
    var.DIGIT: ["12", "*", "1|2", ".", "1)"],
}


@pytest.mark.parametrize(
    ("name", "value"), [(name, value) for name, values in HOSTILE.items() for value in values]
)
@pytest.mark.parametrize("context", SCENARIO_CONTEXTS)
def test_no_unchecked_value_reaches_an_application(
    dialplan: dict[str, list[Step]], name: str, value: str, context: str
) -> None:
    good = dict(var.scenario_values(QUEUE if "inbound" in context else PRESS_1, context))
    good[var.DIAL] = "PJSIP/op-1"
    channel = {**good, name: value}
    outside = Outside(RECORDINGS, {"op-1": "noanswer"}, {"sales": "noanswer"}, presses="1")
    result = Call(dict(dialplan), channel, {}, sets(), outside=outside)
    result.run(context, "s", set(dialplan))
    assert result.errors == []
    assert result.hung_up is not None  # ended in a branch of the scenario, not in an error
    for app, arguments in result.applications:
        assert value not in arguments.split(",") or value in ("", "1"), (app, arguments)
        for piece in ("..", "/tmp", "@", "U(", " ", "Local/", ")"):
            assert piece not in arguments, (app, arguments)


def test_the_engine_sends_what_the_dialplan_accepts(dialplan: dict[str, list[Step]]) -> None:
    # Whatever the checks let through passes the dialplan's own patterns (the same, or wider).
    s = scenario(
        CampaignKind.OUTBOUND,
        play="a" + "b" * 63,
        operators={
            "endpoints": [f"op.{i}-x_{i}" for i in range(scenarios.MAX_ENDPOINTS)],
            "ring_timeout": scenarios.MAX_RING_TIMEOUT,
            "digit": "0",
        },
        no_answer={"play": "z-9_"},
    )
    values = dict(var.scenario_values(s, "zvonok-scenario-outbound"))
    assert all(var.MSET_SAFE.fullmatch(value) for value in values.values())
    channel = {**values, var.DECIDED: "1"}
    outside = Outside({s.play or ""}, presses="0")
    result = Call(dict(dialplan), channel, {}, sets(), outside=outside)
    result.run("zvonok-scenario-outbound", "s", set(dialplan))
    assert result.errors == []
    assert result.rang == list(s.operators.endpoints)  # type: ignore[union-attr]
    assert ("Dial", f"{values[var.DIAL]},300") in result.applications
    assert result.played == [s.play]  # the no-answer recording is not on this Asterisk


def test_the_largest_scenario_still_goes_in_one_mset(dialplan: dict[str, list[Step]]) -> None:
    # Eight operators of the longest names, the longest recordings, ids and reason.
    largest = Scenario(
        "r" * 64,
        Operators(None, tuple(f"{i}" + "e" * 39 for i in range(scenarios.MAX_ENDPOINTS)), 300, "9"),
        "n" * 64,
    )
    decision = Decision(Route.outbound("c" * 48, "a" * 32, largest), "x" * MAX_REASON)
    commands = router().commands(decision, "7" * 15, "7" * 15)
    assert [command[:2] for command in commands] == [
        ("EXEC", "MSet"),
        ("GET VARIABLE", var.DECIDED),
    ]
    endpoints = largest.operators.endpoints  # type: ignore[union-attr]
    outside = Outside({"r" * 64}, dict.fromkeys(endpoints, "answer"), presses="9")
    result = call(dialplan, engine(decision), DIDS[0], outside=outside)
    assert result.errors == []
    assert result.rang == list(endpoints)
