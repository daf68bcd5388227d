"""Names of the channel variables the engine sets; the dialplan reads exactly these.

`ZV_DECIDED` is set last, so that a session cut off halfway never looks like a decision.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..routing.model import Scenario

DECIDED = "ZV_DECIDED"  # "1" once the whole route below is set
ROUTE = "ZV_ROUTE"  # outbound | inbound | fallback
CAMPAIGN = "ZV_CAMPAIGN"  # campaign id (outbound and inbound routes)
ATTEMPT = "ZV_ATTEMPT"  # id of the outbound attempt this call is a callback to
FALLBACK = "ZV_FALLBACK"  # unknown_number | no_inbound_campaign | service_number | engine_error
TARGET_CONTEXT = "ZV_TARGET_CONTEXT"
TARGET_EXTEN = "ZV_TARGET_EXTEN"
REASON = "ZV_REASON"  # human-readable, for logs and CDRs
DID = "ZV_DID"  # the DID, normalised (E.164 digits)
CALLER = "ZV_CALLER"  # the caller, normalised; empty when there is none

# The campaign's scenario (docs/routing.md, "Scenarios"), all empty when it has none. The
# dialplan runs it in SCENARIO_CONTEXT when the campaign has no context of its own.
SCENARIO_CONTEXT = "ZV_SCENARIO_CONTEXT"  # zvonok-scenario-outbound or -inbound
PLAY = "ZV_PLAY"  # the recording heard first
DIGIT = "ZV_DIGIT"  # outbound: pressed during or after it, reaches the operators
QUEUE = "ZV_QUEUE"  # the operators: a queue,
DIAL = "ZV_DIAL"  # or endpoints rung at once, as Dial() takes them: PJSIP/op-1&PJSIP/op-2
RING_TIMEOUT = "ZV_RING_TIMEOUT"  # seconds before "no answer" (a queue: the caller's wait)
NO_ANSWER_PLAY = "ZV_NO_ANSWER_PLAY"  # the recording heard when no operator answers


def scenario_values(scenario: Scenario | None, context: str) -> list[tuple[str, str]]:
    """The scenario's variables; with `context`, the generic context that runs it. Its names
    were checked when it was read (routing.scenario), and the dialplan checks them again."""
    if scenario is None:
        return [(name, "") for name in SCENARIO_VARIABLES]
    operators = scenario.operators
    return [
        (SCENARIO_CONTEXT, context),
        (PLAY, scenario.play or ""),
        (DIGIT, operators.digit or "" if operators else ""),
        (QUEUE, operators.queue or "" if operators else ""),
        (DIAL, "&".join(f"PJSIP/{name}" for name in operators.endpoints) if operators else ""),
        (RING_TIMEOUT, str(operators.ring_timeout) if operators else ""),
        (NO_ANSWER_PLAY, scenario.no_answer_play or ""),
    ]


SCENARIO_VARIABLES = (SCENARIO_CONTEXT, PLAY, DIGIT, QUEUE, DIAL, RING_TIMEOUT, NO_ANSWER_PLAY)


# --- how they are set ---------------------------------------------------------------------------
#
# One `SET VARIABLE` per variable costs a round trip each. `EXEC MSet(A=1,B=2,...)` sets them
# all in one (Asterisk's pbx_builtin_setvar_multiple; recorded in agi_mset.txt): its argument
# is split at commas, with quotes, backslashes and brackets taken specially, so only values of
# plain characters go into it. An empty value is set too: `ZV_FALLBACK=` splits at
# '=' into the name and an empty value (a delimiter at the very end still closes an argument,
# main/app.c __ast_app_separate_args), and Asterisk stores the empty string; one by one it is
# `SET VARIABLE ZV_FALLBACK ""`. Whether the batch took is checked by reading DECIDED back:
# an Asterisk that reads the batch differently (res_agi 1.4 compatibility turns the commas into
# literal ones) leaves DECIDED unset, and the engine then sets every variable one by one.

MSET_SAFE = re.compile(r"[A-Za-z0-9 _.:;/+@&-]*")
MAX_BATCH = 1400  # bytes of MSet's argument: inside one command line (MAX_COMMAND_BYTES)

Command = tuple[str, ...]


def one_by_one(values: Sequence[tuple[str, str]]) -> list[Command]:
    return [("SET VARIABLE", name, value) for name, value in values]


def batched(values: Sequence[tuple[str, str]]) -> list[Command] | None:
    """`values` (DECIDED last) as: a SET VARIABLE for each value MSet could misread, one
    `EXEC MSet` with the rest ending with DECIDED, and `GET VARIABLE DECIDED` to check it.
    None when a batch would not pay or not fit."""
    if MSET_SAFE.fullmatch("".join(value for _, value in values)):  # all (as is the rule)
        plain, others = list(values), []
    else:
        plain = [(n, v) for n, v in values if MSET_SAFE.fullmatch(v)]
        others = [(n, v) for n, v in values if not MSET_SAFE.fullmatch(v)]
    if len(plain) < 3 or plain[-1][0] != DECIDED:
        return None
    argument = ",".join([f"{name}={value}" for name, value in plain])
    if len(argument) > MAX_BATCH:
        return None
    return [*one_by_one(others), ("EXEC", "MSet", argument), ("GET VARIABLE", DECIDED)]
