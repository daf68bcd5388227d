"""An Originate's outcome from Asterisk's events (`zvonok_agi.ami.outcome`), on every recording.

Each recorded call (`ami_originate_*.raw`, ami_coreshowchannels, the link cut) is parsed whole
with the sans-IO AMI parser; the OriginateResponse
of the recorded Originate (by its ActionID) and the Hangup of the channel it made (the
DialBegin to its dial string names that channel) are fed to the mapping in the order recorded
and swapped. The table in the module's docstring is checked against the same recordings, so
what is documented is what the recordings show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import pytest

from fake_ami import CASE_RECORDINGS, ORIGINATE_CASES, RECORDED_OUTCOMES, TRANSCRIPTS, load_raw
from zvonok_agi.ami import outcome as outcome_module
from zvonok_agi.ami.outcome import (
    CAUSE_OUTCOMES,
    REASON_ANSWERED,
    REASON_OUTCOMES,
    from_failure,
    from_originate_response,
    to_int,
)
from zvonok_agi.ami.protocol import NEED_DATA, Action, AMIConnection, Banner, Event, Response
from zvonok_agi.routing.model import Outcome

EXPECTED = RECORDED_OUTCOMES

# The row of the docstring's table ("far end" column) that documents each recording.
DOC_ROWS = {
    "answered": "answers",
    "busy": "486 Busy Here",
    "busy_with_channelid": "486 Busy Here",
    "480": "480 Temp. Unavail.",
    "noanswer": "rings, never answers",
    "nolistener": "nothing listening",
    "unknown_endpoint": "unknown endpoint",
    "ringing_listed": "rings, never answers",
    "link_cut": "rings, never answers",
}
RANG_OUT = ("noanswer", "nolistener", "ringing_listed", "link_cut")


def test_every_recorded_originate_case_has_an_expected_outcome() -> None:
    assert set(EXPECTED) == set(ORIGINATE_CASES)
    recorded = {p.name for p in TRANSCRIPTS.glob("ami_*.raw")}
    assert recorded == {name for names in CASE_RECORDINGS.values() for name in names}


@dataclass(frozen=True)
class RecordedCall:
    originate: Action
    response: Event  # the OriginateResponse of that Originate
    hangup: Event | None  # the Hangup of the channel it made, if it made one
    uniqueid: str | None  # that channel's Uniqueid
    hangup_first: bool  # as recorded (only in ami_coreshowchannels)


def parse(data: list[bytes], *, banner: bool) -> list[object]:
    conn = AMIConnection(expect_banner=banner)
    items: list[object] = []
    for chunk in data:
        conn.receive_data(chunk)
        while (item := conn.next_event()) is not NEED_DATA:
            items.append(item)
    return items


@cache
def recorded_call(case: str) -> RecordedCall:
    received: list[object] = []
    sent: list[object] = []
    for name in CASE_RECORDINGS[case]:  # one connection each
        chunks = load_raw(name)
        received += parse([c.data for c in chunks if c.direction == "<<"], banner=True)
        sent += parse([c.data for c in chunks if c.direction == ">>"], banner=False)
    assert isinstance(received[0], Banner)
    assert all(isinstance(item, Action) for item in sent)

    [originate] = [a for a in sent if isinstance(a, Action) and a.name == "Originate"]
    events = [e for e in received if isinstance(e, Event)]
    [queued] = [
        r for r in received if isinstance(r, Response) and r.action_id == originate.action_id
    ]
    assert queued.message == "Originate successfully queued"
    [response] = [
        e for e in events if e.name == "OriginateResponse" and e.action_id == originate.action_id
    ]
    dial_string = originate["Channel"].partition("/")[2]
    began = [e for e in events if e.name == "DialBegin" and e.get("DialString") == dial_string]
    uniqueid = began[0]["DestUniqueid"] if began else None
    hangups = [e for e in events if e.name == "Hangup" and e.get("Uniqueid") == uniqueid]
    assert len(hangups) <= 1
    hangup = hangups[0] if hangups else None
    hangup_first = hangup is not None and events.index(hangup) < events.index(response)
    return RecordedCall(originate, response, hangup, uniqueid, hangup_first)


def settle(events: list[Event]) -> Outcome:
    """What the mapping gives for the events about one Originate, in the order they came:
    answered at a successful OriginateResponse; a failed one settles at its Hangup (which may
    come before it), or, when no Hangup follows (within the grace), by its Reason alone."""
    reason: int | None = None
    cause: int | None = None
    responded = False
    for event in events:
        if event.name == "OriginateResponse":
            responded = True
            reason = to_int(event.get("Reason"))
            answered = from_originate_response(event.get("Response") == "Success", reason)
            if answered is not None:
                return answered
            if cause is not None:
                return from_failure(reason, cause)
        elif event.name == "Hangup":
            cause = to_int(event.get("Cause"))
            if responded:
                return from_failure(reason, cause)
    assert responded, "no OriginateResponse: the outcome would come from the timeout"
    return from_failure(reason, cause)


@pytest.mark.parametrize("case", ORIGINATE_CASES)
def test_recorded_order(case: str) -> None:
    call = recorded_call(case)
    assert settle(in_order(call, swapped=False)) is EXPECTED[case]


@pytest.mark.parametrize("case", ORIGINATE_CASES)
def test_swapped_order(case: str) -> None:
    call = recorded_call(case)
    assert settle(in_order(call, swapped=True)) is EXPECTED[case]


def in_order(call: RecordedCall, *, swapped: bool) -> list[Event]:
    """The call's OriginateResponse and Hangup as recorded, or the other way round."""
    if call.hangup is None:
        return [call.response]
    first, second = call.response, call.hangup
    if call.hangup_first:
        first, second = second, first
    return [second, first] if swapped else [first, second]


@pytest.mark.parametrize("case", ORIGINATE_CASES)
def test_what_each_recording_carries(case: str) -> None:
    call = recorded_call(case)
    response, hangup = call.response, call.hangup
    assert call.hangup_first is (case == "ringing_listed")
    if case == "answered":
        assert response["Response"] == "Success" and response["Reason"] == "4"
        assert response["Uniqueid"] == call.uniqueid
        assert hangup is not None and hangup["Cause"] == "16"
        return
    assert response["Response"] == "Failure"
    reason = "3" if case in RANG_OUT else "0"
    assert response["Reason"] == reason
    if case == "unknown_endpoint":
        assert call.uniqueid is None and hangup is None  # no channel was ever made
        return
    assert hangup is not None
    cause, tech = {"busy": ("17", "486"), "busy_with_channelid": ("17", "486")}.get(
        case, ("19", "480")
    )
    assert (hangup["Cause"], hangup.get("TechCause")) == (cause, tech)
    # With ChannelId: that id is the channel's Uniqueid, and the failed OriginateResponse
    # carries it too (without, it says "<unknown>"): how the Originator finds its call.
    if "ChannelId" in call.originate:
        assert call.originate["ChannelId"] == call.uniqueid == response["Uniqueid"]
    else:
        assert response["Uniqueid"] == "<unknown>"


@pytest.mark.parametrize("case", ORIGINATE_CASES)
def test_the_reason_alone_is_coarse_and_the_cause_decides(case: str) -> None:
    call = recorded_call(case)
    if call.hangup is None or case == "answered":
        return
    reason = to_int(call.response["Reason"])
    cause = to_int(call.hangup["Cause"])
    assert from_originate_response(False, reason) is None  # wait for the Hangup
    assert from_failure(reason, cause) is EXPECTED[case]


def doc_table() -> dict[str, tuple[str, str, str]]:
    """Rows of the table in outcome.py's docstring: far end -> (response, cause, outcome)."""
    doc = outcome_module.__doc__ or ""
    rows = {}
    for line in doc.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and not set(cells[0]) <= {"-"} and cells[0] != "far end":
            rows[cells[0]] = (cells[1], cells[2], cells[3])
    return rows


@pytest.mark.parametrize("case", ORIGINATE_CASES)
def test_the_documented_table_matches_the_recording(case: str) -> None:
    documented_response, documented_cause, documented_outcome = doc_table()[DOC_ROWS[case]]
    call = recorded_call(case)
    assert documented_outcome == EXPECTED[case].value
    status, _, reason = documented_response.partition(", Reason ")
    assert (status, reason) == (call.response["Response"], call.response["Reason"])
    if call.hangup is None:
        assert documented_cause == "none ever"
    else:
        cause = re.match(r"\d+", documented_cause)
        assert cause is not None and cause[0] == call.hangup["Cause"]


def test_the_documented_table_has_no_row_without_a_recording() -> None:
    assert set(doc_table()) == set(DOC_ROWS.values())


# --- the tables themselves ----------------------------------------------------------------------


def test_success_is_answered_whatever_the_reason() -> None:
    assert from_originate_response(True, REASON_ANSWERED) is Outcome.ANSWERED
    assert from_originate_response(True, None) is Outcome.ANSWERED
    assert from_originate_response(False, REASON_ANSWERED) is Outcome.ANSWERED
    for reason in (None, 0, 1, 3, 5, 8):
        assert from_originate_response(False, reason) is None


@pytest.mark.parametrize(
    "cause, expected",
    [
        (16, Outcome.FAILED),  # normal clearing after a failed Originate: not a known refusal
        (17, Outcome.BUSY),
        (18, Outcome.NO_ANSWER),
        (19, Outcome.NO_ANSWER),
        (20, Outcome.NO_ANSWER),
        (34, Outcome.CONGESTION),
        (38, Outcome.CONGESTION),
        (41, Outcome.CONGESTION),
        (42, Outcome.CONGESTION),
        (44, Outcome.CONGESTION),
        (1, Outcome.FAILED),  # unallocated number
        (21, Outcome.FAILED),  # call rejected
        (0, Outcome.FAILED),
        (127, Outcome.FAILED),
    ],
)
def test_cause_table(cause: int, expected: Outcome) -> None:
    # The cause decides whatever the Reason said: Reason 0 covers busy, 480 and worse alike.
    for reason in (None, 0, 3, 5, 8):
        assert from_failure(reason, cause) is expected


def test_cause_table_is_what_the_tests_say() -> None:
    assert CAUSE_OUTCOMES == {
        17: Outcome.BUSY,
        18: Outcome.NO_ANSWER,
        19: Outcome.NO_ANSWER,
        20: Outcome.NO_ANSWER,
        34: Outcome.CONGESTION,
        38: Outcome.CONGESTION,
        41: Outcome.CONGESTION,
        42: Outcome.CONGESTION,
        44: Outcome.CONGESTION,
    }


@pytest.mark.parametrize(
    "reason, expected",
    [
        (0, Outcome.FAILED),  # no control frame at all: an unknown endpoint
        (1, Outcome.FAILED),  # hangup
        (3, Outcome.NO_ANSWER),  # ringing until the Originate's Timeout
        (5, Outcome.BUSY),
        (8, Outcome.CONGESTION),
        (None, Outcome.FAILED),
        (99, Outcome.FAILED),
    ],
)
def test_reason_table_without_a_hangup(reason: int | None, expected: Outcome) -> None:
    assert from_failure(reason, None) is expected
    assert REASON_OUTCOMES.get(reason if reason is not None else -1, Outcome.FAILED) is expected


@pytest.mark.parametrize(
    "text, value", [("4", 4), ("0", 0), (None, None), ("", None), ("x", None), (" 3", 3)]
)
def test_to_int(text: str | None, value: int | None) -> None:
    assert to_int(text) == value
