"""The shipped dialplan (dialplan/extensions_zvonok.conf).

asterisklint checks it the way an install loads it: #included from an extensions.conf that
has the [general] and [globals] sections. Calls then run through it on a model of Asterisk
(tests/asterisk_dialplan.py): every path from the carrier's entry to the context the call
lands in, the priorities each costs (issue 11's budget), with the variables the engine really
sends and with values no engine should send. Static checks cover the rest: names shared with
the engine, one context per Fallback, the naming scheme (the engine's config templates
included), jumps that land, and that nothing from the caller is ever evaluated.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from asterisk_dialplan import Call, Jumped, NotModelled, Outside, Step, parse, split_top, steps_of
from asterisk_lint import asterisklint
from zvonok_agi.agi import variables
from zvonok_agi.agi.client import FakeChannel, recorded_environment
from zvonok_agi.agi.inbound import InboundRouter
from zvonok_agi.agi.protocol import AsteriskConnection, Command, encode_command
from zvonok_agi.config import ConfigError, DialplanSettings, load_settings
from zvonok_agi.routing.model import CAMPAIGN_ID, Decision, Fallback, Route, RouteKind

ROOT = Path(__file__).resolve().parents[1]
DIALPLAN = ROOT / "dialplan" / "extensions_zvonok.conf"
EXAMPLE_CONFIG = ROOT / "config" / "zvonok.example.toml"
INCLUDED_NAME = "extensions_zvonok.conf"

# An install's extensions.conf around the #include (the shape of the lab config). No spaces
# around "=" in [general]/[globals]: asterisklint warns about them (W_WSH_VARSET).
INSTALL_EXTENSIONS_CONF = f"""\
[general]
static=yes
writeprotect=yes
clearglobalvars=no

[globals]
ZVONOK_AGI_URL=agi://127.0.0.1:4573/inbound

#include {INCLUDED_NAME}
"""

ENTRY_CONTEXT = "zvonok-from-carrier"
CONTEXT_PREFIX = "zvonok-"  # the only contexts the engine may send a call into
DESTINATIONS = ("zvonok-outbound-", "zvonok-inbound-", "zvonok-fallback-")
DIDS = ("74951234567", "+74951234567")  # one per entry pattern: _X. and _+X.
CALLER = "79161234567"
DEFAULT_AGI_URL = "agi://127.0.0.1:4573/inbound"
ENGINE_ERROR = Jumped(f"zvonok-fallback-{Fallback.ENGINE_ERROR.value}", "s", 1)
DEMO_CAMPAIGNS = {
    RouteKind.OUTBOUND: {"spring-sale", "debt-reminder", "pool-promo"},
    RouteKind.INBOUND: {"support", "sales-desk"},
}
MAX_CONTEXT_LEN = 79  # AST_MAX_CONTEXT is 80 with the terminating NUL
# Issue 11: at most this many priorities from the entry extension to the Goto into the
# target context on a decided call (the AGI and that Goto included), debug logging off.
MAX_DECIDED_PRIORITIES = 6

ENGINE_VARIABLES = {
    value for name, value in vars(variables).items() if name.isupper() and isinstance(value, str)
}
TARGET_CONTEXT = f"${{{variables.TARGET_CONTEXT}}}"
TARGET_EXTEN = f"${{{variables.TARGET_EXTEN}}}"

# What the caller (or the carrier) controls: none of it may reach an expression, a jump or
# an application's arguments.
CALLER_CONTROLLED = re.compile(
    r"\$\{(EXTEN|DNID|RDNIS|CALLERID|CONNECTEDLINE|REDIRECTING|PJSIP_HEADER|SIP_HEADER)\b"
)


@pytest.fixture(scope="module")
def dialplan() -> dict[str, list[Step]]:
    return parse(DIALPLAN.read_text(encoding="utf-8"))


def _all_steps(dialplan: dict[str, list[Step]]) -> list[Step]:
    return [step for steps in dialplan.values() for step in steps]


# ---- asterisklint ----------------------------------------------------------------------------


def _lint_as_installed(tmp_path: Path, dialplan_text: str) -> subprocess.CompletedProcess[str]:
    # asterisklint resolves a relative #include against the including file's folder; Asterisk
    # against its config folder. Both files side by side is the same thing for both.
    (tmp_path / INCLUDED_NAME).write_text(dialplan_text, encoding="utf-8")
    (tmp_path / "extensions.conf").write_text(INSTALL_EXTENSIONS_CONF, encoding="utf-8")
    return asterisklint("dialplan-check", tmp_path / "extensions.conf")


def test_asterisklint_accepts_the_dialplan_as_an_install_includes_it(tmp_path: Path) -> None:
    result = _lint_as_installed(tmp_path, DIALPLAN.read_text(encoding="utf-8"))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert output == ""


def test_asterisklint_really_reads_the_included_file(tmp_path: Path) -> None:
    # Guards the test above against passing because the #include was never followed.
    broken = DIALPLAN.read_text(encoding="utf-8") + (
        "\n[zvonok-lint-probe]\nexten => s,1,Goto(zvonok-no-such-context,s,1)\n"
    )
    result = _lint_as_installed(tmp_path, broken)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "E_DP_GOTO_NOCONTEXT" in output
    assert INCLUDED_NAME in output


# ---- calls through the dialplan ----------------------------------------------------------------

Agi = Callable[[str, dict[str, str]], str]  # (URL, the channel's variables) -> AGISTATUS
WINDOW = 7 * 86400.0


def router(*, batch: bool = True) -> InboundRouter:
    """The engine's inbound route, for the variables it sends: no store behind it."""
    return InboundRouter(None, None, DialplanSettings(), WINDOW, batch=batch)  # type: ignore[arg-type]


def engine(decision: Decision, *, batch: bool = True, upto: int | None = None) -> Agi:
    """The engine's session for `decision`: its commands on the wire, answered by the
    FakeChannel as Asterisk does. `upto` ends the session after that many commands."""

    def agi(url: str, channel: dict[str, str]) -> str:
        fake = FakeChannel(channel)
        conn = AsteriskConnection()
        conn.send_environment(recorded_environment(DIDS[0], CALLER))
        for verb, *args in router(batch=batch).commands(decision, DIDS[0], CALLER)[:upto]:
            conn.receive_data(encode_command(verb, *args))
            command = conn.next_event()
            assert isinstance(command, Command)
            fake.answer(conn, command)
        channel.update(fake.variables)
        return "SUCCESS"

    return agi


def unreachable(url: str, channel: dict[str, str]) -> str:
    """Nothing listens at the URL (agi_server_down.txt): no variable, AGISTATUS=FAILURE."""
    return "FAILURE"


def sets(**values: str) -> Agi:
    """An engine (a buggy one) that sets exactly these."""

    def agi(url: str, channel: dict[str, str]) -> str:
        channel.update(values)
        return "SUCCESS"

    return agi


def decided_to(context: str, exten: str = "s") -> Agi:
    return sets(ZV_TARGET_CONTEXT=context, ZV_TARGET_EXTEN=exten, ZV_DECIDED="1")


# Contexts of the install around the file, some named to pass for ours: they exist, so only
# the prefix check keeps the engine out of them.
INSTALL_CONTEXTS = [
    "default",
    "from-internal",
    "zvonok",
    "zvonok_inbound-support",
    "x-zvonok-inbound-support",
    " zvonok-inbound-support",
    "Zvonok-inbound-support",
    "\\zvonok-inbound-support",
]


def call(
    dialplan: dict[str, list[Step]],
    agi: Agi,
    did: str = DIDS[0],
    *,
    channel: dict[str, str] | None = None,
    globals_: dict[str, str] | None = None,
    outside: Outside | None = None,
) -> Call:
    """A carrier call to `did` in an install with the file #included, up to the jump into a
    context other than the file's entry and routing ones."""
    installed = dict(dialplan)
    for name in INSTALL_CONTEXTS:
        installed[name] = [Step(name, exten, 1, None, "Hangup", "", 0) for exten in ("s", "_X.")]
    walked = {name for name in dialplan if not name.startswith(DESTINATIONS)}
    run = Call(
        installed, dict(channel or {}), dict(globals_ or {}), agi, outside=outside or Outside()
    )
    return run.run(ENTRY_CONTEXT, did, walked)


def ran(result: Call) -> list[str]:
    return [f"{step.context}:{step.priority} {step.app}" for step in result.ran]


OUTBOUND = Decision(Route.outbound("spring-sale", "0f3a"), "first callback to spring-sale")
INBOUND = Decision(Route.inbound("support"), "no recent call to this caller from this number")
DECIDED = [
    pytest.param(OUTBOUND, Jumped("zvonok-outbound-spring-sale", "s", 1), id="outbound"),
    pytest.param(INBOUND, Jumped("zvonok-inbound-support", "s", 1), id="inbound"),
] + [
    pytest.param(
        Decision(Route.to_fallback(fallback), f"fallback {fallback.value}"),
        Jumped(f"zvonok-fallback-{fallback}", "s", 1),
        id=f"fallback-{fallback}",
    )
    for fallback in Fallback
]


@pytest.mark.parametrize("did", DIDS)
@pytest.mark.parametrize("batch", [True, False], ids=["mset", "one-by-one"])
@pytest.mark.parametrize(("decision", "target"), DECIDED)
def test_a_decided_call_reaches_its_target_within_the_budget(
    dialplan: dict[str, list[Step]], did: str, batch: bool, decision: Decision, target: Jumped
) -> None:
    result = call(dialplan, engine(decision, batch=batch), did)
    assert result.landed == target, (result.hung_up, result.logged)
    assert len(result.ran) <= MAX_DECIDED_PRIORITIES, ran(result)
    assert result.agi_urls == [DEFAULT_AGI_URL]
    assert result.logged == []  # nothing is logged on the way unless ZVONOK_DEBUG=1


# Priorities from the entry extension to the jump into the context a call ends up in, the AGI
# and that jump included (docs/routing.md lists them, with what the dialplan cost before).
PRIORITIES = {
    "decided": (engine(INBOUND), {}, 5),
    "decided, ZVONOK_DEBUG=1": (engine(INBOUND), {"ZVONOK_DEBUG": "1"}, 6),
    "engine down": (unreachable, {}, 6),
    "engine closed before ZV_DECIDED": (engine(INBOUND, batch=False, upto=-1), {}, 6),
    "target outside zvonok-": (decided_to("default"), {}, 6),
    "target missing": (decided_to("zvonok-inbound-no-such-campaign"), {}, 6),
}


@pytest.mark.parametrize("did", DIDS)
@pytest.mark.parametrize("path", PRIORITIES)
def test_priorities_each_path_costs(dialplan: dict[str, list[Step]], did: str, path: str) -> None:
    agi, globals_, expected = PRIORITIES[path]
    result = call(dialplan, agi, did, globals_=globals_)
    assert len(result.ran) == expected, ran(result)


# A whole route left on the channel by an earlier AGI run, or inherited: never trusted.
EARLIER = {"ZV_TARGET_CONTEXT": "zvonok-outbound-spring-sale", "ZV_TARGET_EXTEN": "s"}
EARLIER_DECIDED = {**EARLIER, "ZV_DECIDED": "1"}
UNDECIDED = {
    "engine down": (unreachable, {}),
    "engine closed at once": (engine(INBOUND, upto=0), {}),
    "engine closed before ZV_DECIDED": (engine(INBOUND, batch=False, upto=-1), {}),
    "an earlier decision, engine down": (unreachable, EARLIER_DECIDED),
    "an earlier decision, engine closed at once": (engine(INBOUND, upto=0), EARLIER_DECIDED),
    "an earlier decision, engine closed before ZV_DECIDED": (
        engine(INBOUND, batch=False, upto=-1),
        EARLIER_DECIDED,
    ),
}


@pytest.mark.parametrize("did", DIDS)
@pytest.mark.parametrize("case", UNDECIDED)
def test_without_a_decision_from_this_agi_run_the_call_gets_engine_error(
    dialplan: dict[str, list[Step]], did: str, case: str
) -> None:
    agi, channel = UNDECIDED[case]
    result = call(dialplan, agi, did, channel=channel)
    assert result.landed == ENGINE_ERROR
    (line,) = result.logged
    assert f"AGISTATUS={result.variables['AGISTATUS']}" in line


@pytest.mark.parametrize("batch", [True, False], ids=["mset", "one-by-one"])
def test_no_value_of_an_earlier_run_survives_a_decision(
    dialplan: dict[str, list[Step]], batch: bool
) -> None:
    # The dialplan clears only ZV_DECIDED: the engine overwrites the rest, empty values too.
    earlier = {name: "earlier" for name in ENGINE_VARIABLES}
    decision = Decision(Route.to_fallback(Fallback.UNKNOWN_NUMBER), "not our number")
    result = call(dialplan, engine(decision, batch=batch), channel=earlier)
    assert result.landed == Jumped("zvonok-fallback-unknown_number", "s", 1)
    sent = router().variables(decision, DIDS[0], CALLER)
    assert {name: result.variables[name] for name in ENGINE_VARIABLES} == dict(sent)
    assert result.variables[variables.CAMPAIGN] == result.variables[variables.ATTEMPT] == ""


@pytest.mark.parametrize("did", DIDS)
def test_zvonok_debug_logs_every_route_for_one_priority_more(
    dialplan: dict[str, list[Step]], did: str
) -> None:
    quiet = call(dialplan, engine(INBOUND), did)
    loud = call(dialplan, engine(INBOUND), did, globals_={"ZVONOK_DEBUG": "1"})
    assert loud.landed == quiet.landed
    assert len(loud.ran) == len(quiet.ran) + 1
    (line,) = loud.logged
    for shown in ("route=inbound", "campaign=support", "target=zvonok-inbound-support"):
        assert shown in line
    assert INBOUND.reason in line
    # Only the global, and only 1, turns it on.
    for globals_, channel in [({"ZVONOK_DEBUG": "0"}, {}), ({}, {"ZVONOK_DEBUG": "1"})]:
        result = call(dialplan, engine(INBOUND), did, channel=channel, globals_=globals_)
        assert (result.logged, len(result.ran)) == ([], len(quiet.ran))


AGI_URL = "agi://10.0.0.5:4573/inbound"  # ':' twice: IF() must not cut it
HAGI_URL = "hagi://zvonok.example.net/inbound"


@pytest.mark.parametrize(
    ("globals_", "channel", "url"),
    [
        ({}, {}, DEFAULT_AGI_URL),
        ({"ZVONOK_AGI_URL": ""}, {}, DEFAULT_AGI_URL),
        ({"ZVONOK_AGI_URL": AGI_URL}, {}, AGI_URL),
        ({"ZVONOK_AGI_URL": AGI_URL}, {"ZVONOK_AGI_URL": DEFAULT_AGI_URL}, AGI_URL),
        ({"ZVONOK_AGI_URL": HAGI_URL}, {}, HAGI_URL),
        # A channel variable of the same name (set by a trunk, inherited) redirects nothing.
        ({}, {"ZVONOK_AGI_URL": "agi://203.0.113.9:4573/inbound"}, DEFAULT_AGI_URL),
    ],
)
def test_the_agi_url_is_the_global_else_the_default(
    dialplan: dict[str, list[Step]], globals_: dict, channel: dict, url: str
) -> None:
    for did in DIDS:
        result = call(dialplan, unreachable, did, channel=channel, globals_=globals_)
        assert result.agi_urls == [url]


@pytest.mark.parametrize("context", ["", *INSTALL_CONTEXTS])
def test_a_target_context_outside_zvonok_is_logged_and_gets_engine_error(
    dialplan: dict[str, list[Step]], context: str
) -> None:
    result = call(dialplan, decided_to(context))
    assert result.landed == ENGINE_ERROR
    (line,) = result.logged
    assert f"target={context},s,1" in line


@pytest.mark.parametrize(
    ("context", "exten"),
    [("zvonok-inbound-no-such-campaign", "s"), ("zvonok-inbound-support", "no-such-exten")],
)
def test_a_missing_target_is_logged_and_gets_engine_error(
    dialplan: dict[str, list[Step]], context: str, exten: str
) -> None:
    result = call(dialplan, decided_to(context, exten))
    assert result.landed == ENGINE_ERROR
    (line,) = result.logged
    assert f"target={context},{exten},1" in line


# Values no engine sends, built to break out: quotes and brackets for the expression parser,
# commas for Goto's fields, ')' then ':' to cut a function's argument short, '?' and ':' for
# GotoIf's branches, ${...} and $[...] that must stay text.
HOSTILE_CONTEXTS = [
    "default,s,1",
    "default,zvonok-,1",
    "zvonok-inbound-support,default",
    "zvonok-inbound-support:default,s,1",
    "zvonok-inbound-support?default,s,1:",
    "zvonok-x):default",
    "zvonok-inbound-support):x",
    "default):zvonok-",
    '" | 1 | "',
    '"zvonok-"',
    'zvonok-inbound-support"',
    "zvonok-inbound-support)",
    "(default",
    "}default",
    "${GLOBAL(ZVONOK_AGI_URL)}",
    "$[1]",
    *INSTALL_CONTEXTS,
]
HOSTILE_EXTENS = ["s", "s,1,default", "s:default", "s)", "s,1):x", "1):default,s,1", "", '"']


@pytest.mark.parametrize("exten", HOSTILE_EXTENS)
@pytest.mark.parametrize("context", HOSTILE_CONTEXTS)
def test_no_value_the_engine_sets_gets_the_call_out_of_the_zvonok_contexts(
    dialplan: dict[str, list[Step]], context: str, exten: str
) -> None:
    result = call(dialplan, decided_to(context, exten))
    # At worst a Goto to a priority that does not exist: the call hangs up, still inside.
    assert result.hung_up or result.landed.context.startswith(CONTEXT_PREFIX), result.landed
    if not context.startswith(CONTEXT_PREFIX):
        assert result.landed == ENGINE_ERROR
    # The expression only ever sees the functions' results, never a value.
    for expression in result.expressions:
        assert re.fullmatch(r"[01]? & [01]? & [01]?", expression), expression


def test_the_model_refuses_what_it_does_not_know() -> None:
    # Guards the tests above: an expression of anything but function results is not guessed.
    run = Call({}, {"X": '" | 1 | "'}, {}, unreachable)
    with pytest.raises(NotModelled):
        run.substitute('$["${X}" = "1"]')


# ---- what the file says ------------------------------------------------------------------------


def test_file_is_includable_only_contexts_of_our_own(dialplan: dict[str, list[Step]]) -> None:
    assert "general" not in dialplan and "globals" not in dialplan
    for name in dialplan:
        assert name.startswith("zvonok-"), name
        assert len(name) <= MAX_CONTEXT_LEN, name


@pytest.mark.parametrize("pattern", ["_X.", "_+X."])
def test_the_entry_clears_only_zv_decided_before_the_agi(
    dialplan: dict[str, list[Step]], pattern: str
) -> None:
    steps = steps_of(dialplan, ENTRY_CONTEXT, pattern)
    before = steps[: [step.app for step in steps].index("AGI")]
    assert [(step.app, step.data) for step in before] == [("Set", f"{variables.DECIDED}=")]


def functions_removed(text: str) -> str:
    """`text` without its ${NAME(...)} function calls (balanced, nested ones included)."""
    while (match := re.search(r"\$\{[A-Z_]+\(", text)) is not None:
        depth, end = 0, match.start()
        for end in range(match.start() + 1, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                break
        text = text[: match.start()] + text[end + 1 :]
    return text


def test_expressions_hold_only_function_results(dialplan: dict[str, list[Step]]) -> None:
    # A value inside $[...] is parsed as expression syntax (and may call functions): values
    # may only pass through functions, whose results are what the expression sees.
    for step in _all_steps(dialplan):
        for expression in re.findall(r"\$\[(.*?)\]", step.data):
            assert re.fullmatch(r"[\s&]*", functions_removed(expression)), step


def test_the_route_is_checked_in_one_expression(dialplan: dict[str, list[Step]]) -> None:
    conditions = [
        split_top(step.data, "?")[0]
        for step in _all_steps(dialplan)
        if step.app == "GotoIf" and step.context != ENTRY_CONTEXT
    ]
    checks = [c for c in conditions if TARGET_CONTEXT in c]
    assert len(checks) == 1, conditions
    (check,) = checks
    assert check.startswith("$[") and check.endswith("]")
    assert f'${{REGEX("^1$" ${{{variables.DECIDED}}})}}' in check
    assert f'${{REGEX("^{CONTEXT_PREFIX}" {TARGET_CONTEXT})}}' in check
    assert f"${{DIALPLAN_EXISTS({TARGET_CONTEXT},{TARGET_EXTEN},1)}}" in check


def test_agistatus_never_decides(dialplan: dict[str, list[Step]]) -> None:
    # A crashed engine leaves AGISTATUS=SUCCESS.
    for step in _all_steps(dialplan):
        if step.app in ("GotoIf", "GosubIf", "ExecIf"):
            assert "AGISTATUS" not in split_top(step.data, "?")[0], step


@pytest.mark.parametrize(
    ("setting", "template"),
    [
        ("outbound_context", "from-internal-{campaign}"),
        ("inbound_context", "{campaign}"),
        ("fallback_context", "default-{fallback}"),
    ],
)
def test_config_refuses_a_context_template_outside_zvonok(setting: str, template: str) -> None:
    environ = {f"ZVONOK_DIALPLAN_{setting.upper()}": template}
    with pytest.raises(ConfigError, match=rf"dialplan\.{setting} must start with zvonok-"):
        load_settings(environ=environ)


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("DIALPLAN_OUTBOUND_SCENARIO_CONTEXT", "default", "dialplan.outbound_scenario_context"),
        ("DIALPLAN_INBOUND_SCENARIO_CONTEXT", "zvonok-a,s,1", "dialplan.inbound_scenario_context"),
        ("OUTBOUND_CONTEXT", "from-internal-{campaign}", "outbound.context must start"),
    ],
)
def test_config_refuses_scenario_and_answered_call_contexts_outside_zvonok(
    name: str, value: str, error: str
) -> None:
    # zvonok-route enters only zvonok- contexts: refused at start, not on every call.
    with pytest.raises(ConfigError, match=re.escape(error)):
        load_settings(environ={f"ZVONOK_{name}": value})


@pytest.mark.parametrize("extension", ["s,1", "s)", "${EXTEN}", "", "a b"])
def test_config_refuses_an_extension_the_dialplan_would_misread(extension: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("dialplan.extension must be")):
        load_settings(environ={"ZVONOK_DIALPLAN_EXTENSION": extension})


def test_config_takes_an_extension_name() -> None:
    assert load_settings(environ={"ZVONOK_DIALPLAN_EXTENSION": "100#"}).dialplan.extension == "100#"


def test_the_scenario_contexts_the_settings_name_are_in_the_dialplan(
    dialplan: dict[str, list[Step]],
) -> None:
    settings = DialplanSettings()
    for context in (settings.outbound_scenario_context, settings.inbound_scenario_context):
        assert steps_of(dialplan, context, "s")[0].priority == 1


@pytest.mark.parametrize(
    "template", ["zvonok-{x}-{campaign}", "zvonok-{campaign}-{0}", "zvonok-{campaign"]
)
def test_config_refuses_a_template_the_engine_could_not_fill(template: str) -> None:
    environ = {"ZVONOK_DIALPLAN_INBOUND_CONTEXT": template}
    with pytest.raises(ConfigError, match=r"dialplan\.inbound_context"):
        load_settings(environ=environ)


@pytest.mark.parametrize("config", [None, EXAMPLE_CONFIG], ids=["defaults", "example"])
def test_config_context_templates_name_contexts_of_this_file(
    dialplan: dict[str, list[Step]], config: Path | None
) -> None:
    templates = load_settings(config, environ={}).dialplan
    for fallback in Fallback:
        assert templates.fallback_context.format(fallback=fallback.value) in dialplan
    for campaign in DEMO_CAMPAIGNS[RouteKind.OUTBOUND]:
        assert templates.outbound_context.format(campaign=campaign) in dialplan
    for campaign in DEMO_CAMPAIGNS[RouteKind.INBOUND]:
        assert templates.inbound_context.format(campaign=campaign) in dialplan


@pytest.mark.parametrize(("decision", "target"), DECIDED)
def test_the_engine_sets_every_variable_zv_decided_last(decision: Decision, target: Jumped) -> None:
    values = router().variables(decision, DIDS[0], CALLER)
    assert {name for name, _ in values} == ENGINE_VARIABLES
    assert values[-1] == (variables.DECIDED, "1")


# Set by the dialplan itself (Read() in zvonok-scenario-outbound), read only after.
DIALPLAN_VARIABLES = {"ZV_PRESSED"}


def test_only_engine_variable_names_are_used(dialplan: dict[str, list[Step]]) -> None:
    used = {name for step in _all_steps(dialplan) for name in re.findall(r"\bZV_\w+", step.data)}
    known = ENGINE_VARIABLES | DIALPLAN_VARIABLES
    assert used <= known, used - known


def test_nothing_from_the_caller_is_evaluated(dialplan: dict[str, list[Step]]) -> None:
    for step in _all_steps(dialplan):
        assert not CALLER_CONTROLLED.search(step.data), f"line {step.lineno}: {step.data}"
        assert step.app not in ("Exec", "Eval", "TryExec"), f"line {step.lineno}"


@pytest.mark.parametrize("fallback", list(Fallback))
def test_every_fallback_has_its_context(
    dialplan: dict[str, list[Step]], fallback: Fallback
) -> None:
    context = f"zvonok-fallback-{fallback.value}"
    assert context in dialplan
    s = steps_of(dialplan, context, "s")
    assert s[0].priority == 1
    assert any(step.app == "Playback" for step in s)
    assert s[-1].app == "Hangup"
    for catch in ("_X.", "i"):
        assert [step.data for step in steps_of(dialplan, context, catch)] == ["s,1"]


def test_no_fallback_context_without_a_fallback(dialplan: dict[str, list[Step]]) -> None:
    prefix = "zvonok-fallback-"
    named = {name.removeprefix(prefix) for name in dialplan if name.startswith(prefix)}
    assert named == {fallback.value for fallback in Fallback}


def jumps(step: Step) -> list[tuple[str, str, str]]:
    """Where Goto/GotoIf may send the call, read statically: (context, exten, priority); a
    branch chosen by IF() counts as both of IF()'s branches."""
    if step.app == "Goto":
        branches = [step.data]
    elif step.app == "GotoIf":
        _, rest = split_top(step.data, "?")
        assert rest is not None, step
        branches = chosen(split_top(rest, ":"))
    else:
        return []
    found = []
    for branch in filter(None, branches):
        parts = [part.strip() for part in branch.split(",")]
        if len(parts) == 1:
            found.append((step.context, step.exten, parts[0]))
        elif len(parts) == 2:
            found.append((step.context, parts[0], parts[1]))
        else:
            assert len(parts) == 3, f"line {step.lineno}: {step.data!r}"
            found.append((parts[0], parts[1], parts[2]))
    return found


def chosen(branches: list[str | None]) -> list[str | None]:
    """Branches as written, an IF() (nested ones too) counting as each of its branches."""
    found: list[str | None] = []
    for branch in branches:
        by_if = re.fullmatch(r"\$\{IF\((.*)\)\}", branch or "")
        if by_if:
            _, alternatives = split_top(by_if[1], "?")
            found += chosen(split_top(alternatives or "", ":"))
        else:
            found.append(branch)
    return found


DYNAMIC_JUMPS = {
    (TARGET_CONTEXT, TARGET_EXTEN, "1"),
    (f"${{{variables.SCENARIO_CONTEXT}}}", "s", "1"),
}


def test_every_jump_lands_in_this_file(dialplan: dict[str, list[Step]]) -> None:
    for step in _all_steps(dialplan):
        for context, exten, priority in jumps(step):
            where = f"line {step.lineno}: {step.app}({step.data})"
            if "${" in context:
                # The dynamic jumps: the engine's target or scenario context, checked before
                # (tests above).
                assert (context, exten, priority) in DYNAMIC_JUMPS, where
                continue
            assert context in dialplan, where
            target = steps_of(dialplan, context, exten)
            assert target, where
            if priority.isdigit():
                assert priority == "1" and target[0].priority == 1, where
            else:
                assert priority in {step.label for step in target}, where


def test_campaign_contexts_follow_the_naming_scheme(dialplan: dict[str, list[Step]]) -> None:
    found: dict[RouteKind, set[str]] = {RouteKind.OUTBOUND: set(), RouteKind.INBOUND: set()}
    for name in dialplan:
        for kind in found:
            prefix = f"zvonok-{kind.value}-"
            if name.startswith(prefix):
                campaign = name.removeprefix(prefix)
                assert CAMPAIGN_ID.match(campaign), name
                s = steps_of(dialplan, name, "s")
                assert s and s[0].priority == 1, name
                assert s[-1].app == "Hangup", name
                found[kind].add(campaign)
    for kind, demo in DEMO_CAMPAIGNS.items():
        assert demo <= found[kind], (kind, demo - found[kind])


def test_outbound_examples_show_the_callback_variables(dialplan: dict[str, list[Step]]) -> None:
    for campaign in DEMO_CAMPAIGNS[RouteKind.OUTBOUND]:
        data = " ".join(step.data for step in dialplan[f"zvonok-outbound-{campaign}"])
        assert f"${{{variables.ATTEMPT}}}" in data and f"${{{variables.CALLER}}}" in data
