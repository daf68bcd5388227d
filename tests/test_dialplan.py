"""The shipped dialplan (dialplan/extensions_zvonok.conf).

asterisklint checks it the way an install loads it: #included from an extensions.conf that
has the [general] and [globals] sections. A small parser here then checks that it agrees with
the engine: the variable names of zvonok_agi.agi.variables, one context per Fallback, the
context naming scheme (the engine's config templates included), jumps that land somewhere,
and the guard that sends a target context outside zvonok- to engine_error.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from asterisk_lint import asterisklint
from zvonok_agi.agi import variables
from zvonok_agi.config import ConfigError, load_settings
from zvonok_agi.routing.model import CAMPAIGN_ID, Fallback, RouteKind

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
ENTRY_PATTERNS = ("_X.", "_+X.")
DEFAULT_AGI_URL = "agi://127.0.0.1:4573/inbound"
DEMO_CAMPAIGNS = {
    RouteKind.OUTBOUND: {"spring-sale", "debt-reminder", "pool-promo"},
    RouteKind.INBOUND: {"support", "sales-desk"},
}
MAX_CONTEXT_LEN = 79  # AST_MAX_CONTEXT is 80 with the terminating NUL

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


# ---- a minimal extensions.conf reader ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    context: str
    exten: str
    priority: str  # "1", "n", ...
    label: str | None
    app: str
    data: str
    lineno: int


@dataclass(frozen=True, slots=True)
class Jump:
    context: str
    exten: str
    priority: str  # a number or a label


_PRIORITY = re.compile(r"^(?P<prio>\d+|n)(?:\((?P<label>[A-Za-z0-9_-]+)\))?$")
_APP = re.compile(r"^(?P<app>\w+)\((?P<data>.*)\)$")


def _strip_comment(line: str) -> str:
    match = re.search(r"(?<!\\);", line)
    return line[: match.start()] if match else line


def parse(text: str) -> dict[str, list[Step]]:
    contexts: dict[str, list[Step]] = {}
    context: str | None = None
    exten: str | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"line {lineno}: {raw!r}"
            context = line[1:-1]
            assert context not in contexts, f"line {lineno}: context {context} defined twice"
            contexts[context] = []
            exten = None
            continue
        assert context is not None, f"line {lineno}: outside any context"
        key, arrow, body = line.partition("=>")
        assert arrow, f"line {lineno}: not an 'exten =>' or 'same =>' line: {raw!r}"
        key = key.strip()
        if key == "exten":
            exten, _, body = body.strip().partition(",")
        else:
            assert key == "same" and exten is not None, f"line {lineno}: {raw!r}"
        priority, _, app_call = body.strip().partition(",")
        prio = _PRIORITY.match(priority.strip())
        app = _APP.match(app_call.strip())
        assert prio and app, f"line {lineno}: {raw!r}"
        contexts[context].append(
            Step(
                context=context,
                exten=exten,
                priority=prio["prio"],
                label=prio["label"],
                app=app["app"],
                data=app["data"],
                lineno=lineno,
            )
        )
    return contexts


def steps_of(contexts: dict[str, list[Step]], context: str, exten: str) -> list[Step]:
    return [step for step in contexts[context] if step.exten == exten]


def _split_condition(data: str) -> tuple[str, str]:
    condition, question, branches = data.rpartition("?")
    assert question, f"no '?' in {data!r}"
    return condition, branches


def jumps(step: Step) -> list[Jump]:
    """Static reading of where Goto/GotoIf/Gosub/GosubIf may send the call."""
    if step.app in ("Goto", "Gosub"):
        branches = [step.data]
    elif step.app in ("GotoIf", "GosubIf"):
        branches = [b for b in _split_condition(step.data)[1].split(":") if b]
    else:
        return []
    result = []
    for branch in branches:
        parts = [part.strip() for part in branch.split(",")]
        if len(parts) == 1:
            result.append(Jump(step.context, step.exten, parts[0]))
        elif len(parts) == 2:
            result.append(Jump(step.context, parts[0], parts[1]))
        else:
            assert len(parts) == 3, f"line {step.lineno}: {step.data!r}"
            result.append(Jump(*parts))
    return result


def run_until_agi(contexts: dict[str, list[Step]], context: str, exten: str) -> list[Step]:
    """Steps the entry extension runs before AGI, Gosub subroutines inlined."""
    ran: list[Step] = []
    for step in steps_of(contexts, context, exten):
        if step.app == "AGI":
            return ran
        if step.app == "Gosub":
            (target,) = jumps(step)
            for sub_step in steps_of(contexts, target.context, target.exten):
                if sub_step.app == "Return":
                    break
                ran.append(sub_step)
        else:
            ran.append(step)
    raise AssertionError(f"{exten}@{context} never runs AGI")


def steps_after_agi(contexts: dict[str, list[Step]], context: str, exten: str) -> list[Step]:
    """What decides after the AGI: the rest of the extension, or where its Goto leads."""
    steps = steps_of(contexts, context, exten)
    rest = steps[[step.app for step in steps].index("AGI") + 1 :]
    if rest and rest[0].app == "Goto":
        (target,) = jumps(rest[0])
        return steps_of(contexts, target.context, target.exten)
    return rest


@pytest.fixture(scope="module")
def dialplan() -> dict[str, list[Step]]:
    return parse(DIALPLAN.read_text(encoding="utf-8"))


def _all_steps(dialplan: dict[str, list[Step]]) -> list[Step]:
    return [step for steps in dialplan.values() for step in steps]


def prefix_guard(after: list[Step]) -> Step:
    """The GotoIf that sends a target context outside zvonok- away."""
    found = [
        step
        for step in after
        if step.app == "GotoIf"
        and f"${{{variables.TARGET_CONTEXT}:" in step.data
        and CONTEXT_PREFIX in step.data
    ]
    assert len(found) == 1, f"one {CONTEXT_PREFIX} prefix check expected, found {found}"
    return found[0]


_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::(?P<offset>\d+)(?::(?P<length>\d+))?)?\}")


def substitute(text: str, channel: dict[str, str]) -> str:
    """${NAME} and ${NAME:offset:length} as Asterisk expands them (offsets >= 0 only)."""

    def value(match: re.Match[str]) -> str:
        start = int(match["offset"] or 0)
        end = start + int(match["length"]) if match["length"] else None
        return channel.get(match["name"], "")[start:end]

    return _VARIABLE.sub(value, text)


def compare(expression: str) -> bool:
    """A $["..." = "..."] or $["..." != "..."] string comparison, already substituted."""
    match = re.fullmatch(r'\$\["([^"]*)" (!?=) "([^"]*)"\]', expression)
    assert match, f"not a plain string comparison: {expression!r}"
    left, operator, right = match.groups()
    return (left == right) == (operator == "=")


# ---- the dialplan and the engine agree -----------------------------------------------------------


def test_file_is_includable_only_contexts_of_our_own(dialplan: dict[str, list[Step]]) -> None:
    assert "general" not in dialplan and "globals" not in dialplan
    for name in dialplan:
        assert name.startswith("zvonok-"), name
        assert len(name) <= MAX_CONTEXT_LEN, name


@pytest.mark.parametrize("pattern", ENTRY_PATTERNS)
def test_entry_clears_every_engine_variable_before_the_agi(
    dialplan: dict[str, list[Step]], pattern: str
) -> None:
    before = run_until_agi(dialplan, ENTRY_CONTEXT, pattern)
    # ZV_DECIDED first: nothing set before the AGI may pass for a decision.
    assert (before[0].app, before[0].data) == ("Set", f"{variables.DECIDED}=")
    cleared = {
        step.data.removesuffix("=")
        for step in before
        if step.app == "Set" and step.data.endswith("=")
    }
    assert cleared >= ENGINE_VARIABLES
    # The AGI URL defaults to the local engine.
    assert any(DEFAULT_AGI_URL in step.data for step in before)


@pytest.mark.parametrize("pattern", ENTRY_PATTERNS)
def test_entry_trusts_only_zv_decided_and_an_existing_target(
    dialplan: dict[str, list[Step]], pattern: str
) -> None:
    after = steps_after_agi(dialplan, ENTRY_CONTEXT, pattern)
    conditions = [
        _split_condition(step.data)[0] if step.app == "GotoIf" else None for step in after
    ]
    decided = re.compile(r'\$\["\$\{' + re.escape(variables.DECIDED) + r'\}" !?= "1"\]')
    target_exists = f"${{DIALPLAN_EXISTS({TARGET_CONTEXT},{TARGET_EXTEN},1)}}"
    go_to_target = ("Goto", f"{TARGET_CONTEXT},{TARGET_EXTEN},1")

    checks_decided = [i for i, c in enumerate(conditions) if c and decided.fullmatch(c)]
    checks_prefix = after.index(prefix_guard(after))
    checks_target = [i for i, c in enumerate(conditions) if c == target_exists]
    goes_to_target = [i for i, step in enumerate(after) if (step.app, step.data) == go_to_target]
    assert checks_decided and checks_target and goes_to_target, after
    # The prefix comes before DIALPLAN_EXISTS, whose branch jumps straight to the Goto.
    assert checks_decided[0] < checks_prefix < checks_target[0] < goes_to_target[0]

    # Anything else ends in the engine_error fallback, and the route is logged.
    engine_error = Jump(f"zvonok-fallback-{Fallback.ENGINE_ERROR}", "s", "1")
    assert any(engine_error in jumps(step) for step in after)
    assert any(
        step.app == "Verbose"
        and f"${{{variables.ROUTE}}}" in step.data
        and f"${{{variables.REASON}}}" in step.data
        for step in after
    )
    # AGISTATUS is never what decides: a crashed engine leaves it at SUCCESS.
    for step in _all_steps(dialplan):
        if step.app in ("GotoIf", "GosubIf", "ExecIf"):
            assert "AGISTATUS" not in _split_condition(step.data)[0], step


@pytest.fixture(scope="module")
def route_steps(dialplan: dict[str, list[Step]]) -> list[Step]:
    return steps_after_agi(dialplan, ENTRY_CONTEXT, ENTRY_PATTERNS[0])


def test_a_target_context_outside_zvonok_is_logged_and_gets_engine_error(
    route_steps: list[Step],
) -> None:
    _, branches = _split_condition(prefix_guard(route_steps).data)
    assert ":" not in branches, "the guard's condition being true must mean: refused"
    labels = [step.label for step in route_steps]
    refused = route_steps[labels.index(branches) :]
    assert refused[0].app == "Verbose" and TARGET_CONTEXT in refused[0].data
    assert refused[1].app == "Goto"
    assert jumps(refused[1]) == [Jump(f"zvonok-fallback-{Fallback.ENGINE_ERROR}", "s", "1")]


@pytest.mark.parametrize(
    ("context", "refused"),
    [
        ("default", True),
        ("from-internal", True),
        ("", True),
        ("zvonok", True),
        ("zvonok_inbound-support", True),
        ("x-zvonok-inbound-support", True),
        ("zvonok-inbound-support", False),
        ("zvonok-outbound-spring-sale", False),
        (f"zvonok-fallback-{Fallback.ENGINE_ERROR}", False),
    ],
)
def test_the_prefix_guard_refuses_other_contexts(
    route_steps: list[Step], context: str, refused: bool
) -> None:
    condition, _ = _split_condition(prefix_guard(route_steps).data)
    channel = {variables.TARGET_CONTEXT: context, variables.TARGET_EXTEN: "s"}
    assert compare(substitute(condition, channel)) is refused


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


def test_only_engine_variable_names_are_used(dialplan: dict[str, list[Step]]) -> None:
    used = {name for step in _all_steps(dialplan) for name in re.findall(r"\bZV_\w+", step.data)}
    assert used <= ENGINE_VARIABLES, used - ENGINE_VARIABLES


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
    assert s[0].priority == "1"
    assert any(step.app == "Playback" for step in s)
    assert s[-1].app == "Hangup"
    for catch in ("_X.", "i"):
        assert [step.data for step in steps_of(dialplan, context, catch)] == ["s,1"]


def test_no_fallback_context_without_a_fallback(dialplan: dict[str, list[Step]]) -> None:
    prefix = "zvonok-fallback-"
    named = {name.removeprefix(prefix) for name in dialplan if name.startswith(prefix)}
    assert named == {fallback.value for fallback in Fallback}


def test_every_jump_lands_in_this_file(dialplan: dict[str, list[Step]]) -> None:
    for step in _all_steps(dialplan):
        for jump in jumps(step):
            where = f"line {step.lineno}: {step.app}({step.data})"
            if "${" in jump.context:
                # The one dynamic jump: the engine's target, checked (prefix, DIALPLAN_EXISTS).
                assert jump == Jump(TARGET_CONTEXT, TARGET_EXTEN, "1"), where
                continue
            assert jump.context in dialplan, where
            target = steps_of(dialplan, jump.context, jump.exten)
            assert target, where
            if jump.priority.isdigit():
                assert jump.priority == "1" and target[0].priority == "1", where
            else:
                assert jump.priority in {step.label for step in target}, where


def test_campaign_contexts_follow_the_naming_scheme(dialplan: dict[str, list[Step]]) -> None:
    found: dict[RouteKind, set[str]] = {RouteKind.OUTBOUND: set(), RouteKind.INBOUND: set()}
    for name in dialplan:
        for kind in found:
            prefix = f"zvonok-{kind.value}-"
            if name.startswith(prefix):
                campaign = name.removeprefix(prefix)
                assert CAMPAIGN_ID.match(campaign), name
                s = steps_of(dialplan, name, "s")
                assert s and s[0].priority == "1", name
                assert s[-1].app == "Hangup", name
                found[kind].add(campaign)
    for kind, demo in DEMO_CAMPAIGNS.items():
        assert demo <= found[kind], (kind, demo - found[kind])


def test_outbound_examples_show_the_callback_variables(dialplan: dict[str, list[Step]]) -> None:
    for campaign in DEMO_CAMPAIGNS[RouteKind.OUTBOUND]:
        data = " ".join(step.data for step in dialplan[f"zvonok-outbound-{campaign}"])
        assert f"${{{variables.ATTEMPT}}}" in data and f"${{{variables.CALLER}}}" in data
