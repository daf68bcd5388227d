"""Campaign scenarios as data: the document people write, checked; the form Redis keeps.

A scenario says what a campaign's calls do (docs/routing.md, "Scenarios"):

    {"version": 1,
     "play": "promo-may",
     "operators": {"digit": "1", "queue": "sales" | "endpoints": ["op-1", "op-2"],
                   "ring_timeout": 20},
     "no_answer": {"play": "sorry-busy"}}

It is checked wherever it enters: the API and the CLI (`parse`, then `for_kind` for the
campaign it is for), and the routing data the engine reads (`from_stored`: whatever reached
Redis by another path is checked again before a call sees it). Every name ends up as an
argument of an Asterisk application, so each is of a narrow alphabet: no argument separator
(`,` `|` `&`), no bracket, quote, backslash, `$`, space or `/`; a recording name has no dot
either, so no `..` and no extension.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .model import CampaignKind, Operators, Scenario

VERSION = 1
# A file of Asterisk's sounds folder, named without folder or extension.
RECORDING = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# A PJSIP endpoint or a queue (a pjsip.conf or queues.conf section name), conservatively.
ENDPOINT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
QUEUE = ENDPOINT
DIGITS = tuple("0123456789")
DEFAULT_DIGIT = "1"
MIN_RING_TIMEOUT, MAX_RING_TIMEOUT, DEFAULT_RING_TIMEOUT = 5, 300, 20
MAX_ENDPOINTS = 8

FIELDS = {"version", "play", "operators", "no_answer"}
OPERATOR_FIELDS = {"digit", "queue", "endpoints", "ring_timeout"}
NO_ANSWER_FIELDS = {"play"}

RECORDING_RULE = (
    "lowercase letters, digits, '-' and '_', 1 to 64 characters, no folder, no extension"
)
NAME_RULE = "letters, digits, '.', '-' and '_', 1 to 40 characters"


class ScenarioError(ValueError):
    """A scenario that is refused: `field` is where (scenario.operators.queue, ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = f"{field}: {message}"


def _bad(field: str, message: str) -> ScenarioError:
    return ScenarioError(field, message)


# ---- the document ---------------------------------------------------------------------------


def parse(document: object, field: str = "scenario") -> Scenario:
    """The scenario a document describes; ScenarioError when it is malformed.
    Whether it fits a campaign is `for_kind`'s to say."""
    body = _object(document, field, FIELDS)
    version = body.get("version", VERSION)
    if version != VERSION or isinstance(version, bool):
        raise _bad(f"{field}.version", f"must be {VERSION}, not {version!r}")
    play = _recording(body.get("play"), f"{field}.play")
    operators = None
    if body.get("operators") is not None:
        operators = _operators(body["operators"], f"{field}.operators")
    no_answer_play = None
    if body.get("no_answer") is not None:
        where = f"{field}.no_answer"
        no_answer = _object(body["no_answer"], where, NO_ANSWER_FIELDS)
        no_answer_play = _recording(no_answer.get("play"), f"{where}.play", required=True)
        if operators is None:
            raise _bad(where, "is what callers hear when no operator answers: give operators")
    if play is None and operators is None:
        raise _bad(field, "give a recording to play, operators, or both")
    return Scenario(play, operators, no_answer_play)


def for_kind(scenario: Scenario, kind: CampaignKind, field: str = "scenario") -> Scenario:
    """The scenario as a campaign of `kind` runs it, or ScenarioError: an outbound campaign's
    calls hear a recording and reach the operators by a digit ("1" unless given); an inbound
    campaign's callers reach them at once (no digit)."""
    operators = scenario.operators
    if kind is CampaignKind.INBOUND:
        if operators is not None and operators.digit is not None:
            raise _bad(
                f"{field}.operators.digit",
                "an inbound campaign's callers reach the operators at once: no digit to press",
            )
        return scenario
    if scenario.play is None:
        raise _bad(
            f"{field}.play",
            "an outbound campaign's calls hear a recording: name it",
        )
    if operators is not None and operators.digit is None:
        return replace(scenario, operators=replace(operators, digit=DEFAULT_DIGIT))
    return scenario


def _operators(raw: object, field: str) -> Operators:
    body = _object(raw, field, OPERATOR_FIELDS)
    if ("queue" in body) == ("endpoints" in body):
        raise _bad(field, "give a queue or endpoints (one of the two)")
    queue = endpoints = None
    if "queue" in body:
        queue = _name(body["queue"], f"{field}.queue", QUEUE, "a queue name")
    else:
        endpoints = _endpoints(body["endpoints"], f"{field}.endpoints")
    ring_timeout = body.get("ring_timeout", DEFAULT_RING_TIMEOUT)
    if isinstance(ring_timeout, float) and ring_timeout.is_integer():
        ring_timeout = int(ring_timeout)  # 20.0 is JSON's 20 too
    if (
        isinstance(ring_timeout, bool)
        or not isinstance(ring_timeout, int)
        or not MIN_RING_TIMEOUT <= ring_timeout <= MAX_RING_TIMEOUT
    ):
        raise _bad(
            f"{field}.ring_timeout",
            f"a whole number of seconds, {MIN_RING_TIMEOUT} to {MAX_RING_TIMEOUT}, "
            f"not {ring_timeout!r}",
        )
    digit = body.get("digit")
    if digit is not None and digit not in DIGITS:
        raise _bad(f"{field}.digit", f"one digit, 0 to 9, not {digit!r}")
    return Operators(queue, tuple(endpoints or ()), ring_timeout, digit)


def _endpoints(raw: object, field: str) -> list[str]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_ENDPOINTS:
        raise _bad(field, f"a list of 1 to {MAX_ENDPOINTS} PJSIP endpoint names")
    names = [
        _name(item, f"{field}[{i}]", ENDPOINT, "a PJSIP endpoint name")
        for i, item in enumerate(raw)
    ]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise _bad(field, f"{', '.join(twice)} listed twice")
    return names


def _object(raw: object, field: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise _bad(field, "must be a JSON object")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise _bad(
            field,
            f"unknown field(s): {', '.join(map(str, unknown))} "
            f"(known: {', '.join(sorted(allowed))})",
        )
    return raw


def _recording(raw: object, field: str, required: bool = False) -> str | None:
    if raw is None and not required:
        return None
    if not isinstance(raw, str) or not RECORDING.fullmatch(raw):
        raise _bad(field, f"{raw!r} is not a recording name: {RECORDING_RULE}")
    return raw


def _name(raw: object, field: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(raw, str) or not pattern.fullmatch(raw):
        raise _bad(field, f"{raw!r} is not {what}: {NAME_RULE}")
    return raw


def document(scenario: Scenario) -> dict[str, Any]:
    """The scenario as the API shows it (every default written out)."""
    out: dict[str, Any] = {"version": VERSION}
    if scenario.play is not None:
        out["play"] = scenario.play
    operators = scenario.operators
    if operators is not None:
        out["operators"] = {
            **({"digit": operators.digit} if operators.digit else {}),
            **(
                {"queue": operators.queue}
                if operators.queue
                else {"endpoints": list(operators.endpoints)}
            ),
            "ring_timeout": operators.ring_timeout,
        }
    if scenario.no_answer_play is not None:
        out["no_answer"] = {"play": scenario.no_answer_play}
    return out


def describe(scenario: Scenario | None) -> str:
    """One line for people: `plays promo-may; 1: queue sales, 20 s; no answer: sorry`."""
    if scenario is None:
        return "none (its own dialplan context)"
    parts = [f"plays {scenario.play}"] if scenario.play else []
    operators = scenario.operators
    if operators is not None:
        who = (
            f"queue {operators.queue}"
            if operators.queue
            else ("endpoints " + " ".join(operators.endpoints))
        )
        press = f"{operators.digit}: " if operators.digit else ""
        parts.append(f"{press}{who}, {operators.ring_timeout} s")
    if scenario.no_answer_play:
        parts.append(f"no answer: {scenario.no_answer_play}")
    return "; ".join(parts)


# ---- the stored form (the store's column, the routing data in Redis) -------------------------
#
# A JSON array, small for the engine's memory: [play, operators, no_answer_play], operators
# being [digit, queue, endpoints, ring_timeout] or null, and "" for a name not given.


def stored(scenario: Scenario) -> list[Any]:
    operators = scenario.operators
    return [
        scenario.play or "",
        None
        if operators is None
        else [
            operators.digit or "",
            operators.queue or "",
            list(operators.endpoints),
            operators.ring_timeout,
        ],
        scenario.no_answer_play or "",
    ]


def from_stored(value: object) -> Scenario:
    """The scenario a stored value holds, every name checked again; ScenarioError if it holds
    none (written by hand, by another path, or by a newer release)."""
    if not isinstance(value, list) or len(value) != 3:
        raise _bad("scenario", f"{value!r} is not a stored scenario")
    play, raw_operators, no_answer_play = value
    operators = None
    if raw_operators is not None:
        if not isinstance(raw_operators, list) or len(raw_operators) != 4:
            raise _bad("scenario.operators", f"{raw_operators!r} is not stored operators")
        digit, queue, endpoints, ring_timeout = raw_operators
        document: dict[str, Any] = {"ring_timeout": ring_timeout}
        if queue:
            document["queue"] = queue
        if endpoints or not queue:
            document["endpoints"] = endpoints
        if digit:
            document["digit"] = digit
        operators = _operators(document, "scenario.operators")
    return Scenario(
        _recording(play or None, "scenario.play"),
        operators,
        _recording(no_answer_play or None, "scenario.no_answer.play"),
    )
