"""A small model of Asterisk 22's dialplan: reads an extensions.conf and runs a call through it.

There is no Asterisk binary here, so the tests run the shipped dialplan on this model. Each piece
follows Asterisk's source: variable substitution (main/pbx_variables.c,
pbx_substitute_variables_helper_full and parse_variable_name), argument splitting (main/app.c
__ast_app_separate_args, shared with the FakeChannel), GotoIf and Goto (main/pbx_builtins.c,
main/pbx.c pbx_parseable_goto), and the functions the dialplan calls (func_logic.c IF and
ISNULL, func_strings.c REGEX, func_dialplan.c DIALPLAN_EXISTS, func_global.c GLOBAL).
`$[...]` expressions are modelled only as far as the dialplan uses them: operands joined by `&`
(main/ast_expr2.y op_and). Anything outside the model raises NotModelled rather than guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from zvonok_agi.agi.client import separate_args

# ---- reading extensions.conf ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    context: str
    exten: str
    priority: int
    label: str | None
    app: str
    data: str
    lineno: int


_PRIORITY = re.compile(r"^(?P<prio>\d+|n)(?:\((?P<label>[A-Za-z0-9_-]+)\))?$")
_APP = re.compile(r"^(?P<app>\w+)\((?P<data>.*)\)$")


def _strip_comment(line: str) -> str:
    match = re.search(r"(?<!\\);", line)
    return line[: match.start()] if match else line


def parse(text: str) -> dict[str, list[Step]]:
    """Contexts and their steps, priorities numbered (`n` is the previous one plus one)."""
    contexts: dict[str, list[Step]] = {}
    context: str | None = None
    exten: str | None = None
    last = 0
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
        last = last + 1 if prio["prio"] == "n" else int(prio["prio"])
        contexts[context].append(
            Step(context, exten, last, prio["label"], app["app"], app["data"], lineno)
        )
    return contexts


def steps_of(contexts: dict[str, list[Step]], context: str, exten: str) -> list[Step]:
    return [step for step in contexts.get(context, []) if step.exten == exten]


def split_top(text: str, sep: str) -> tuple[str, str | None]:
    """`text` cut at the first `sep` outside ${...} and $[...]: what the application sees
    once those are substituted (a substituted value holds no `sep` of ours)."""
    depth = 0
    for i, char in enumerate(text):
        if char in "{[" and i and text[i - 1] == "$":
            depth += 1
        elif char in "}]" and depth:
            depth -= 1
        elif char == sep and not depth:
            return text[:i], text[i + 1 :]
    return text, None


# ---- running a call -----------------------------------------------------------------------------


class NotModelled(AssertionError):
    """The dialplan used something this model does not know: extend the model, do not guess."""


def extension_matches(pattern: str, exten: str) -> bool:
    """Asterisk's extension patterns: _X (0-9), _Z (1-9), _N (2-9), [...], '.', '!'."""
    if not pattern.startswith("_"):
        return pattern == exten
    regex = ""
    i = 1
    while i < len(pattern):
        char = pattern[i]
        if char == "[":
            end = pattern.index("]", i)
            regex += f"[{pattern[i + 1 : end]}]"
            i = end
        else:
            regex += {"X": "[0-9]", "Z": "[1-9]", "N": "[2-9]", ".": ".+", "!": ".*"}.get(
                char.upper(), re.escape(char)
            )
        i += 1
    return re.fullmatch(regex, exten, re.DOTALL) is not None


def _c_int(text: str) -> int | None:
    """sscanf("%d"): leading blanks, a sign, digits; the rest is ignored."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match[1]) if match else None


def check_condition(condition: str) -> bool:
    """main/pbx.c pbx_checkcondition: empty is false, a number is its value, any text is true."""
    if not condition:
        return False
    number = _c_int(condition)
    return bool(number) if number is not None else True


def substring(value: str, offset: int, length: int | None) -> str:
    """${NAME:offset:length} (main/pbx_variables.c substring)."""
    size = len(value)
    if offset < 0:
        offset = max(size + offset, 0)
    if offset >= size:
        return ""
    value = value[offset:]
    if length is None:
        return value
    return value[:length] if length >= 0 else value[: max(len(value) + length, 0)]


@dataclass
class Jumped:
    """Where a Goto sent the call: (context, exten, priority)."""

    context: str
    exten: str
    priority: int


@dataclass
class Call:
    """One call's way through the dialplan, and the channel it leaves behind."""

    contexts: dict[str, list[Step]]
    variables: dict[str, str]
    globals: dict[str, str]
    agi: Callable[[str, dict[str, str]], str]  # (URL, channel variables) -> AGISTATUS
    ran: list[Step] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)
    agi_urls: list[str] = field(default_factory=list)
    expressions: list[str] = field(default_factory=list)  # each $[...] as evaluated
    landed: Jumped | None = None  # the first jump out of the contexts walked
    hung_up: str | None = None  # why the channel hung up, if it did

    # -- substitution --

    def substitute(self, template: str) -> str:
        """${...} and $[...] replaced, inner ones first; a value is never scanned again."""
        out: list[str] = []
        i = 0
        while i < len(template):
            if template[i] == "$" and template[i + 1 : i + 2] in ("{", "["):
                opener = template[i + 1]
                closer = "}" if opener == "{" else "]"
                j, depth, needsub = i + 2, 1, False
                while depth and j < len(template):
                    if template[j] == "$" and template[j + 1 : j + 2] in ("{", "["):
                        needsub = True
                    elif template[j] == opener:
                        depth += 1
                    elif template[j] == closer:
                        depth -= 1
                    j += 1
                if depth:
                    raise NotModelled(f"unbalanced {opener} in {template!r}")
                inner = template[i + 2 : j - 1]
                if needsub:
                    inner = self.substitute(inner)
                out.append(self.variable(inner) if opener == "{" else self.expression(inner))
                i = j
            else:
                out.append(template[i])
                i += 1
        return "".join(out)

    def variable(self, text: str) -> str:
        """The substituted inside of ${...}: a variable or a function, maybe :offset:length."""
        parens, is_function = 0, False
        offset, length = 0, None
        for i, char in enumerate(text):
            if char == "(":
                parens += 1
                is_function = True
            elif char == ")":
                parens -= 1
            elif char == ":" and parens == 0:
                match = re.match(r"\s*([+-]?\d+)(?::\s*([+-]?\d+))?", text[i + 1 :])
                if match:
                    offset = int(match[1])
                    length = int(match[2]) if match[2] is not None else None
                text = text[:i]
                break
        if is_function:
            value = self.function(text)
        else:
            value = self.variables.get(text, self.globals.get(text))
        return "" if value is None else substring(value, offset, length)

    def expression(self, text: str) -> str:
        """$[...] (main/ast_expr2.y): here only operands joined by '&'. A syntax error is "0"."""
        self.expressions.append(text)
        if not text.strip():
            return ""
        operands = [operand.strip() for operand in text.split("&")]
        if "&&" in text or not all(re.fullmatch(r"[0-9]*", op) for op in operands):
            raise NotModelled(f"expression $[{text}]")
        if not all(operands):
            return "0"  # a missing operand: syntax error
        if any(int(operand) == 0 for operand in operands):
            return "0"  # op_and: 0 if either side is zero
        return str(int(operands[0]))  # else the left side, as a number

    # -- functions --

    def function(self, call: str) -> str | None:
        """A function's result; None when it fails (the substitution is then empty)."""
        name, paren, args = call.partition("(")
        if paren:
            end = args.rfind(")")
            args = args[:end] if end >= 0 else args
        read = {
            "GLOBAL": lambda: self.globals.get(args, ""),
            "ISNULL": lambda: "0" if args else "1",
            "IF": lambda: self.func_if(args),
            "REGEX": lambda: self.func_regex(args),
            "DIALPLAN_EXISTS": lambda: self.func_dialplan_exists(args),
        }.get(name)
        if read is None:
            raise NotModelled(f"function {name}")
        return read()

    def func_if(self, data: str) -> str | None:
        expr, *rest = separate_args(data, "?", remove_chars=True, limit=2)
        branches = separate_args(rest[0], ":", remove_chars=True, limit=2) if rest else []
        if not expr or not branches:
            return None  # "Syntax IF(<expr>?[<true>][:<false>])"
        iftrue = branches[0].strip()
        iffalse = branches[1].strip() if len(branches) > 1 else ""
        return iftrue if check_condition(expr.strip()) else iffalse

    def func_regex(self, data: str) -> str | None:
        args = separate_args(data, '"', remove_chars=True, limit=3)
        if len(args) != 3:
            return None
        _, pattern, text = args
        if text[:1] in (" ", "\t"):
            text = text[1:]
        if not re.fullmatch(r"\^?[A-Za-z0-9_-]*\$?", pattern):
            raise NotModelled(f"regex {pattern!r}")
        # POSIX ERE without REG_NEWLINE: '$' is the end of the string only.
        pattern = pattern.removesuffix("$") + (r"\Z" if pattern.endswith("$") else "")
        return "1" if re.search(pattern, text) else "0"

    def func_dialplan_exists(self, data: str) -> str | None:
        if not data:
            return None
        context, exten, priority = (
            separate_args(data, ",", remove_chars=True, limit=3) + [""] * 3
        )[:3]
        if priority:
            number = _c_int(priority)
            if number is not None and number > 0:
                found = self.find(context, exten, number) is not None
            else:
                found = self.find_label(context, exten, priority) is not None
        elif exten:
            found = self.find(context, exten, 1) is not None
        elif context:
            found = context in self.contexts
        else:
            return None
        return "1" if found else "0"

    # -- the dialplan --

    def extension(self, context: str, exten: str) -> list[Step]:
        patterns = {step.exten for step in self.contexts.get(context, [])}
        matching = [p for p in patterns if extension_matches(p, exten)]
        if len(matching) > 1:
            raise NotModelled(f"{exten} matches several extensions of {context}: {matching}")
        return steps_of(self.contexts, context, matching[0]) if matching else []

    def find(self, context: str, exten: str, priority: int) -> Step | None:
        return next((s for s in self.extension(context, exten) if s.priority == priority), None)

    def find_label(self, context: str, exten: str, label: str) -> Step | None:
        return next((s for s in self.extension(context, exten) if s.label == label), None)

    # -- applications --

    def goto(self, data: str, here: Step) -> Jumped | None:
        """main/pbx.c pbx_parseable_goto; None when it fails (Goto then hangs up the call)."""
        fields = data.split(",")
        if len(fields) == 1:
            context, exten, priority = here.context, here.exten, fields[0]
        elif len(fields) == 2:
            context, exten, priority = here.context, fields[0], fields[1]
        else:
            context, exten, priority = fields[0] or here.context, fields[1] or here.exten, fields[2]
        if priority[:1] in ("+", "-"):
            raise NotModelled(f"relative priority {priority}")
        if re.fullmatch(r"\s*\d+\s*", priority):
            return Jumped(context, exten, int(priority))
        step = self.find_label(context, exten, priority)
        return Jumped(context, exten, step.priority) if step else None

    def execute(self, step: Step) -> Jumped | None:
        """Run one priority; where it jumps, if it does."""
        data = self.substitute(step.data)
        if step.app == "Set":
            name, equals, value = data.partition("=")
            if equals:
                self.variables[name] = value
        elif step.app == "AGI":
            url = separate_args(data, ",", remove_chars=True, limit=128)[0]
            self.agi_urls.append(url)
            self.variables["AGISTATUS"] = self.agi(url, self.variables)
        elif step.app == "Verbose":
            self.logged.append(separate_args(data, ",", remove_chars=True, limit=2)[-1])
        elif step.app in ("Goto", "GotoIf"):
            if step.app == "GotoIf":
                condition, _, branches = data.partition("?")
                iftrue, _, iffalse = branches.partition(":")
                data = iftrue if check_condition(condition) else iffalse
                if not data:
                    return None
            jumped = self.goto(data, step)
            if jumped is None:
                self.hung_up = f"line {step.lineno}: Goto({data}) failed"
            return jumped
        else:
            raise NotModelled(f"application {step.app}")
        return None

    def run(self, context: str, exten: str, walked: set[str]) -> Call:
        """From `exten` of `context`, priority 1, through the contexts `walked`, until the call
        jumps out of them (landed) or hangs up."""
        where: Jumped | None = Jumped(context, exten, 1)
        while where is not None and where.context in walked:
            step = self.find(where.context, where.exten, where.priority)
            if step is None:
                self.hung_up = f"no {where}"
                return self
            if len(self.ran) > 100:
                raise AssertionError("the dialplan loops")
            self.ran.append(step)
            jumped = self.execute(step)
            if self.hung_up:
                return self
            where = jumped or Jumped(where.context, where.exten, where.priority + 1)
        self.landed = where
        return self
