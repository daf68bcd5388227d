"""A small model of Asterisk 22's dialplan: reads an extensions.conf and runs a call through it.

There is no Asterisk binary here, so the tests run the shipped dialplan on this model. Each piece
follows Asterisk's source: variable substitution (main/pbx_variables.c,
pbx_substitute_variables_helper_full and parse_variable_name), argument splitting (main/app.c
__ast_app_separate_args, shared with the FakeChannel), GotoIf and Goto (main/pbx_builtins.c,
main/pbx.c pbx_parseable_goto), and the functions the dialplan calls (func_logic.c IF and
ISNULL, func_strings.c REGEX, func_dialplan.c DIALPLAN_EXISTS, func_global.c GLOBAL,
app_queue.c QUEUE_EXISTS).
`$[...]` expressions are modelled only as far as the dialplan uses them: operands joined by `&`
(main/ast_expr2.y op_and). Anything outside the model raises NotModelled rather than guess.

The applications that reach outside the dialplan (Playback, Read, Dial, Queue) act on an
`Outside`: the recordings, endpoints and queues there are, what their phones do, what the
caller presses. What they leave in the dialplan is what a real Asterisk 22 left
(tests/fixtures/asterisk/dialplan_dial_playback_outcomes.txt), or, where nothing was recorded,
what their source does (app_read.c with main/app.c ast_app_getdata, app_queue.c queue_exec).
An application given arguments it refuses (Asterisk logs an error and, for most, hangs the
call up) is an `error` of the call.
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


# The POSIX extended regular expressions REGEX() is given here, as far as they read the same
# to Python: anchors, literals, bracket expressions of ranges and literals (no classes, no
# escapes), groups, alternation and the quantifiers ? * + {m,n}.
_ERE = re.compile(r"(?:\[[A-Za-z0-9_.&/-]+\]|\{\d+(?:,\d*)?\}|[A-Za-z0-9_&/-]|[()|?*+^$])*")


def posix_ere(pattern: str) -> str:
    """A POSIX ERE (regcomp REG_EXTENDED, no REG_NEWLINE) as the Python pattern that matches
    the same strings; NotModelled for anything else."""
    if not _ERE.fullmatch(pattern):
        raise NotModelled(f"regex {pattern!r}")
    return pattern.replace("$", r"\Z")  # the end of the string only: no REG_NEWLINE


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
class Outside:
    """What the applications reach: sound files, PJSIP endpoints and queues, each with what
    its phones do ("answer", "noanswer" rings out, "busy"; a queue also "joinempty"), and the
    digits the caller presses when asked."""

    recordings: set[str] = field(default_factory=set)
    endpoints: dict[str, str] = field(default_factory=dict)
    queues: dict[str, str] = field(default_factory=dict)
    presses: str = ""


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
    outside: Outside = field(default_factory=Outside)
    applications: list[tuple[str, str]] = field(default_factory=list)  # (app, its arguments)
    played: list[str] = field(default_factory=list)  # recordings heard, in order
    rang: list[str] = field(default_factory=list)  # Dial()'s endpoints and Queue()'s queues
    errors: list[str] = field(default_factory=list)  # arguments an application refused
    answered: bool = False

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
            "QUEUE_EXISTS": lambda: self.func_queue_exists(args),
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
        return "1" if re.search(posix_ere(pattern), text) else "0"

    def func_queue_exists(self, data: str) -> str | None:
        if not data:
            self.errors.append("QUEUE_EXISTS requires an argument: queuename")
            return None
        return "1" if data in self.outside.queues else "0"

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
        elif step.app in ("Answer", "Progress", "Hangup", "Playback", "Read", "Dial", "Queue"):
            self.applications.append((step.app, data))
            getattr(self, f"app_{step.app.lower()}")(data)
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

    # -- applications that reach outside the dialplan --

    def app_answer(self, data: str) -> None:
        self.answered = True

    def app_progress(self, data: str) -> None:
        pass  # early media: the call stays unanswered

    def app_hangup(self, data: str) -> None:
        self.hung_up = f"Hangup({data})"

    def refused(self, why: str) -> None:
        """An application refused its arguments: Asterisk logs it and hangs up."""
        self.errors.append(why)
        self.hung_up = f"error: {why}"

    def app_playback(self, data: str) -> None:
        """app_playback.c: every file of `a&b` is played, one missing is logged and skipped
        (PLAYBACKSTATUS=FAILED, the call goes on: recorded); the call is answered first
        unless the noanswer option says not to."""
        files, *options = separate_args(data, ",", remove_chars=True, limit=2) + [""]
        if not files:
            self.refused("Playback requires an argument (filename)")
            return
        if "noanswer" not in options[0].split("|"):
            self.answered = True
        failed = False
        for name in files.split("&"):
            if name in self.outside.recordings:
                self.played.append(name)
            else:
                failed = True
        self.variables["PLAYBACKSTATUS"] = "FAILED" if failed else "SUCCESS"

    def app_read(self, data: str) -> None:
        """app_read.c: answers the call, plays the prompt and takes up to `maxdigits` digits
        into the variable ("" when none came: TIMEOUT). A prompt that does not exist ends it at
        once (main/app.c ast_app_getdata: ast_streamfile fails): the variable is "",
        READSTATUS=ERROR, and the call goes on."""
        args = separate_args(data, ",", remove_chars=True, limit=6) + [""] * 6
        variable, prompt, maxdigits, options, _, _ = args[:6]
        if not variable:
            self.refused("Invalid! Usage: Read(variable[,filename][,maxdigits]...)")
            return
        if options or "&" in prompt or not maxdigits.isdigit():
            raise NotModelled(f"Read({data})")
        self.answered = True
        if prompt and prompt not in self.outside.recordings:
            self.variables[variable], self.variables["READSTATUS"] = "", "ERROR"
            return
        if prompt:
            self.played.append(prompt)
        pressed = self.outside.presses[: int(maxdigits)]
        self.variables[variable] = pressed
        self.variables["READSTATUS"] = "OK" if pressed else "TIMEOUT"

    def app_dial(self, data: str) -> None:
        """app_dial.c, as recorded: an endpoint that does not exist is CHANUNAVAIL (cause 3),
        one that rings out NOANSWER (HANGUPCAUSE left as it was), a busy one BUSY (cause 17);
        the dialplan goes on after each. One that answers is bridged, and the call ends with
        the bridge (no `g` option)."""
        peers, timeout, *rest = separate_args(data, ",", remove_chars=True, limit=3) + [""] * 2
        if not peers:
            self.refused("Dial requires an argument (technology/resource)")
            return
        if rest[0] or not re.fullmatch(r"\d+", timeout):
            raise NotModelled(f"Dial({data})")
        outcomes = []
        for peer in peers.split("&"):
            tech, slash, endpoint = peer.partition("/")
            if not slash or not tech:
                self.refused(f"Dial argument takes format (technology/resource): {peer}")
                return
            if tech != "PJSIP" or not re.fullmatch(r"[^/@&,]+", endpoint):
                raise NotModelled(f"Dial peer {peer!r}")
            self.rang.append(endpoint)
            outcomes.append(self.outside.endpoints.get(endpoint, "chanunavail"))
        if "answer" in outcomes:
            self.variables["DIALSTATUS"] = "ANSWER"
            self.hung_up = "the bridged call ended"
        elif "noanswer" in outcomes:
            self.variables["DIALSTATUS"] = "NOANSWER"
        elif "busy" in outcomes:
            self.variables.update(DIALSTATUS="BUSY", HANGUPCAUSE="17")
        else:
            self.variables.update(DIALSTATUS="CHANUNAVAIL", HANGUPCAUSE="3")

    def app_queue(self, data: str) -> None:
        """app_queue.c queue_exec: a queue that does not exist is logged ("Unable to join
        queue") and the dialplan goes on with QUEUESTATUS=UNKNOWN; one where nobody answers
        within the timeout goes on with TIMEOUT (or JOINEMPTY, ...); an answered call ends with
        the bridge (no `c` option)."""
        args = separate_args(data, ",", remove_chars=True, limit=10) + [""] * 10
        name, options, _, _, timeout = args[:5]
        if not name:
            self.refused("Queue requires an argument: queuename[,options[,URL...")
            return
        if options or any(args[5:]) or not re.fullmatch(r"\d+", timeout):
            raise NotModelled(f"Queue({data})")
        self.rang.append(name)
        outcome = self.outside.queues.get(name)
        if outcome is None:
            self.variables["QUEUESTATUS"] = "UNKNOWN"
        elif outcome == "answer":
            self.hung_up = "the bridged call ended"
        else:
            self.variables["QUEUESTATUS"] = {"noanswer": "TIMEOUT"}.get(outcome, outcome.upper())

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
