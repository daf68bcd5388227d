"""Names of the channel variables the engine sets; the dialplan reads exactly these.

`ZV_DECIDED` is set last, so that a session cut off halfway never looks like a decision.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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

MSET_SAFE = re.compile(r"[A-Za-z0-9 _.:;/+@-]*")
MAX_BATCH = 900  # bytes of MSet's argument: well inside one AGI command line

Command = tuple[str, ...]


def one_by_one(values: Sequence[tuple[str, str]]) -> list[Command]:
    return [("SET VARIABLE", name, value) for name, value in values]


def batched(values: Sequence[tuple[str, str]]) -> list[Command] | None:
    """`values` (DECIDED last) as: a SET VARIABLE for each value MSet could misread, one
    `EXEC MSet` with the rest ending with DECIDED, and `GET VARIABLE DECIDED` to check it.
    None when a batch would not pay or not fit."""
    plain = [(n, v) for n, v in values if MSET_SAFE.fullmatch(v)]
    if len(plain) < 3 or plain[-1][0] != DECIDED:
        return None
    argument = ",".join(f"{name}={value}" for name, value in plain)
    if len(argument) > MAX_BATCH:
        return None
    others = [(n, v) for n, v in values if not MSET_SAFE.fullmatch(v)]
    return [*one_by_one(others), ("EXEC", "MSet", argument), ("GET VARIABLE", DECIDED)]
