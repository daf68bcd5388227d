"""An Originate's outcome from the events Asterisk sends about it (pure).

What Asterisk 22 sends (see the ami_originate_* recordings):

| far end              | OriginateResponse      | Hangup Cause (TechCause) | outcome     |
|----------------------|------------------------|--------------------------|-------------|
| answers              | Success, Reason 4      | 16 later, when it ends   | answered    |
| 486 Busy Here        | Failure, Reason 0      | 17 (486)                 | busy        |
| 480 Temp. Unavail.   | Failure, Reason 0      | 19 (480)                 | no_answer   |
| rings, never answers | Failure, Reason 3      | 19 (480)                 | no_answer   |
| nothing listening    | Failure, Reason 3      | 19 (480)                 | no_answer   |
| unknown endpoint     | Failure, Reason 0      | none ever                | failed      |

`Reason` is coarse (0 covers busy, 480 and a bad endpoint alike): the real cause is only in
the Hangup event, which may come before or after the OriginateResponse. So a failed
OriginateResponse settles at the Hangup, or, when no Hangup follows within a short grace, by
its Reason alone.

When the events may have been missed (the AMI link was down, the dialer that placed the call
stopped), `CoreShowChannels` says what became of the call: its channel's Uniqueid is the
ChannelId given (ami_coreshowchannels). Listed and Up: it was answered. Listed otherwise: it
still rings; wait for its events, which reach any session reading calls
(ami_link_cut_during_call_conn_b). Not listed: it is over; it settles by the events that did
arrive (after the same grace), else as failed.
"""

from __future__ import annotations

from ..routing.model import Outcome

# Asterisk's OriginateResponse Reason is the last control frame seen (AST_CONTROL_*).
REASON_ANSWERED = 4
REASON_OUTCOMES = {
    3: Outcome.NO_ANSWER,  # ringing (or nothing) until the Originate timeout
    5: Outcome.BUSY,
    8: Outcome.CONGESTION,
}

# Q.850 cause codes of the Hangup event.
CAUSE_OUTCOMES = {
    17: Outcome.BUSY,  # user busy
    18: Outcome.NO_ANSWER,  # no user responding
    19: Outcome.NO_ANSWER,  # no answer (also SIP 480 Temporarily Unavailable)
    20: Outcome.NO_ANSWER,  # subscriber absent
    34: Outcome.CONGESTION,  # no circuit available
    38: Outcome.CONGESTION,  # network out of order
    41: Outcome.CONGESTION,  # temporary failure
    42: Outcome.CONGESTION,  # switching equipment congestion
    44: Outcome.CONGESTION,  # requested channel not available
}


def from_originate_response(success: bool, reason: int | None) -> Outcome | None:
    """The outcome an OriginateResponse settles by itself: answered; else None (wait for the
    Hangup's cause)."""
    if success or reason == REASON_ANSWERED:
        return Outcome.ANSWERED
    return None


# ChannelState of a channel that has answered (AST_STATE_UP).
CHANNEL_STATE_UP = 6


def from_listing(state: int | None) -> Outcome | None:
    """What a call's line in CoreShowChannels settles by itself: answered once its channel is
    Up; else None (still ringing, or `state` None: not listed, over)."""
    return Outcome.ANSWERED if state == CHANNEL_STATE_UP else None


def from_failure(reason: int | None, cause: int | None) -> Outcome:
    """A failed Originate's outcome: the Hangup cause when there was one, else the Reason."""
    if cause is not None:
        return CAUSE_OUTCOMES.get(cause, Outcome.FAILED)
    return REASON_OUTCOMES.get(reason if reason is not None else -1, Outcome.FAILED)


def to_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
