"""The sans-IO AMI parser against the recorded bytes of a real Asterisk 22."""

from __future__ import annotations

import ast
import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fake_ami import TRANSCRIPTS, load_raw
from zvonok_agi.ami.protocol import (
    MAX_LINE,
    MAX_PACKET,
    NEED_DATA,
    Action,
    AMIConnection,
    AMIProtocolError,
    Banner,
    Closed,
    Event,
    Response,
    encode_action,
    ends_event_list,
    starts_event_list,
)

# Packets Asterisk sent (after the banner) and the actions the client sent, per recording.
ORIGINATE = ("Login", "Originate", "Logoff")
RAW_COUNTS = {
    "ami_originate_answered.raw": (28, ORIGINATE),
    "ami_originate_busy.raw": (14, ORIGINATE),
    "ami_originate_busy_with_channelid.raw": (15, ORIGINATE),
    "ami_originate_480.raw": (14, ORIGINATE),
    "ami_originate_noanswer.raw": (14, ORIGINATE),
    "ami_originate_nolistener.raw": (12, ORIGINATE),
    "ami_originate_unknown_endpoint.raw": (6, ORIGINATE),
    "ami_coreshowchannels.raw": (
        24,
        (
            "Login",
            "CoreShowChannels",
            "Originate",
            "CoreShowChannels",
            "Status",
            "Status",
            "CoreShowChannels",
            "Logoff",
        ),
    ),
    # The client cut this link while the call rang: no Logoff.
    "ami_link_cut_during_call_conn_a.raw": (9, ("Login", "Originate")),
    "ami_link_cut_during_call_conn_b.raw": (
        10,
        ("Login", "CoreShowChannels", "CoreShowChannels", "Logoff"),
    ),
}


def stream(name: str, direction: str) -> bytes:
    return b"".join(c.data for c in load_raw(name) if c.direction == direction)


def parse_chunks(
    chunks: list[bytes], *, expect_banner: bool = True, events: tuple[str, ...] | None = None
) -> list[object]:
    """Feed the chunks, then EOF; every event up to and including Closed."""
    conn = AMIConnection(expect_banner=expect_banner, events=events)
    out: list[object] = []
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not NEED_DATA:
            out.append(event)
            if isinstance(event, Closed):
                return out
    raise AssertionError("no Closed after EOF")


def split_random(data: bytes, rng: random.Random, largest: int = 200) -> list[bytes]:
    chunks, pos = [], 0
    while pos < len(data):
        size = rng.randint(1, largest)
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


def events_of(name: str) -> list[Event]:
    return [e for e in parse_chunks([stream(name, "<<")]) if isinstance(e, Event)]


def test_every_ami_recording_is_counted() -> None:
    assert sorted(p.name for p in TRANSCRIPTS.glob("ami_*.raw")) == sorted(RAW_COUNTS)


@pytest.mark.parametrize("name", sorted(RAW_COUNTS))
def test_recording_parses_whole_bytewise_and_in_random_chunks(name: str) -> None:
    data = stream(name, "<<")
    whole = parse_chunks([data])
    packets, _ = RAW_COUNTS[name]
    assert whole[0] == Banner("Asterisk Call Manager/11.0.0")
    assert isinstance(whole[-1], Closed)
    assert len(whole) == packets + 2
    assert all(isinstance(e, Response | Event) for e in whole[1:-1])
    # Each recorded chunk holds whole packets: the parser agrees with the recording's framing.
    recorded = [c.data for c in load_raw(name) if c.direction == "<<"]
    one_by_one = [parse_chunks([recorded[0]])[0]]
    for chunk in recorded[1:]:
        one_by_one += parse_chunks([chunk], expect_banner=False)[:-1]
    assert one_by_one == whole[:-1]
    assert parse_chunks([data[i : i + 1] for i in range(len(data))]) == whole
    rng = random.Random(name)
    for _ in range(20):
        assert parse_chunks(split_random(data, rng)) == whole


WANTED = ("OriginateResponse", "Hangup")


def wanted(items: list[object]) -> list[object]:
    """What a parser asked for WANTED gives: those events, every event carrying an ActionID
    (a list's items), and everything that is not an event."""
    return [
        item
        for item in items
        if not isinstance(item, Event) or item.name in WANTED or item.action_id is not None
    ]


@pytest.mark.parametrize("name", sorted(RAW_COUNTS))
def test_unwanted_events_are_skipped_whatever_the_chunking(name: str) -> None:
    data = stream(name, "<<")
    expected = wanted(parse_chunks([data]))
    assert parse_chunks([data], events=WANTED) == expected
    assert parse_chunks([data[i : i + 1] for i in range(len(data))], events=WANTED) == expected
    rng = random.Random(name)
    for _ in range(20):
        assert parse_chunks(split_random(data, rng), events=WANTED) == expected
    names = {e.name for e in expected if isinstance(e, Event)}
    assert names <= {
        *WANTED,
        "CoreShowChannel",
        "CoreShowChannelsComplete",
        "Status",
        "StatusComplete",
    }


@pytest.mark.parametrize(
    "data",
    [
        b"Event: Newstate\nChannel: a\n\nEvent: Hangup\nCause: 16\n\n",  # bare LF
        b"Event: Newstate\r\nChannel: a\n\r\nEvent: Hangup\r\nCause: 16\r\n\r\n",  # mixed
        b"\r\n\r\nEvent: Newstate\r\n\r\nEvent: Hangup\r\nCause: 16\r\n\r\n",  # stray
    ],
)
def test_skipping_ends_where_the_line_reader_ends_a_packet(data: bytes) -> None:
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        [hangup, closed] = parse_chunks(chunks, expect_banner=False, events=WANTED)
        assert isinstance(hangup, Event) and hangup["Cause"] == "16"
        assert isinstance(closed, Closed)


def test_a_skipped_event_is_held_to_the_same_limits() -> None:
    conn = AMIConnection(expect_banner=False, events=WANTED, max_packet=100)
    conn.receive_data(b"Event: Newstate\r\n" + b"X: y\r\n" * 30)
    with pytest.raises(AMIProtocolError, match="longer than 100 bytes"):
        conn.next_event()
    conn = AMIConnection(expect_banner=False, events=WANTED)
    conn.receive_data(b"Event: Newstate\r\nChannel: a\r\n")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(AMIProtocolError, match="in the middle of a packet"):
        conn.next_event()


@pytest.mark.parametrize("name", sorted(RAW_COUNTS))
def test_client_side_of_recording_parses_as_actions(name: str) -> None:
    data = stream(name, ">>")
    actions = parse_chunks([data], expect_banner=False)[:-1]
    assert all(isinstance(a, Action) for a in actions)
    assert tuple(a.name for a in actions) == RAW_COUNTS[name][1]  # type: ignore[attr-defined]
    assert (
        parse_chunks([data[i : i + 1] for i in range(len(data))], expect_banner=False)[:-1]
        == actions
    )


@given(st.sampled_from(sorted(RAW_COUNTS)), st.lists(st.integers(1, 700), max_size=60))
def test_any_chunking_gives_the_same_packets(name: str, sizes: list[int]) -> None:
    data = stream(name, "<<")
    chunks, pos = [], 0
    for size in sizes:
        chunks.append(data[pos : pos + size])
        pos += size
    chunks.append(data[pos:])
    assert parse_chunks([c for c in chunks if c]) == parse_chunks([data])


def test_busy_fields() -> None:
    events = events_of("ami_originate_busy.raw")
    hangup = next(e for e in events if e.name == "Hangup")
    assert hangup["Cause"] == "17"
    assert hangup["TechCause"] == "486"
    assert hangup["Cause-txt"] == "User busy"
    result = next(e for e in events if e.name == "OriginateResponse")
    assert (result["Response"], result["Reason"]) == ("Failure", "0")
    assert result.action_id == "x1"
    # Without ChannelId a failed originate cannot be tied to its channel by Uniqueid.
    assert result["Uniqueid"] == "<unknown>"
    assert hangup["Uniqueid"] == "1795749530.11"
    dial_end = next(e for e in events if e.name == "DialEnd")
    assert dial_end["DialStatus"] == "BUSY"


def test_originate_queued_response_comes_after_an_unrelated_event() -> None:
    packets = parse_chunks([stream("ami_originate_busy.raw", "<<")])
    # Login reply, FullyBooted, then SuccessfulAuth arrives after the Originate was sent.
    assert isinstance(packets[3], Event) and packets[3].name == "SuccessfulAuth"
    queued = packets[4]
    assert isinstance(queued, Response)
    assert (queued.status, queued.message, queued.action_id) == (
        "Success",
        "Originate successfully queued",
        "x1",
    )


@pytest.mark.parametrize(
    ("case", "reason", "response", "cause"),
    [
        ("answered", "4", "Success", "16"),
        ("busy", "0", "Failure", "17"),
        ("busy_with_channelid", "0", "Failure", "17"),
        ("480", "0", "Failure", "19"),
        ("noanswer", "3", "Failure", "19"),
        ("nolistener", "3", "Failure", "19"),
        ("unknown_endpoint", "0", "Failure", None),
    ],
)
def test_originate_outcome_fields(case: str, reason: str, response: str, cause: str) -> None:
    events = events_of(f"ami_originate_{case}.raw")
    result = next(e for e in events if e.name == "OriginateResponse")
    assert result["Reason"] == reason
    assert result["Response"] == response
    hangups = [e for e in events if e.name == "Hangup"]
    assert [h["Cause"] for h in hangups] == ([cause] if cause else [])


def test_noanswer_has_no_dialend_and_channelid_becomes_the_uniqueid() -> None:
    assert "DialEnd" not in [e.name for e in events_of("ami_originate_noanswer.raw")]
    assert "DialEnd" not in [e.name for e in events_of("ami_originate_nolistener.raw")]
    events = events_of("ami_originate_busy_with_channelid.raw")
    result = next(e for e in events if e.name == "OriginateResponse")
    assert result["Uniqueid"] == "lab-x1-chan"
    ids = {e.get("Uniqueid") or e.get("DestUniqueid") for e in events[2:]}
    assert ids == {"lab-x1-chan"}


def test_values_keep_spaces_and_empty_values() -> None:
    events = events_of("ami_originate_answered.raw")
    loss = next(e for e in events if e.get("Variable") == "RTPAUDIOQOSLOSS")
    assert loss["Value"].startswith("  minrxlost=")
    newchannel = next(e for e in events if e.name == "Newchannel")
    assert newchannel["AccountCode"] == ""


def login_misc_session(number: int) -> list[tuple[str, bytes]]:
    """(direction, bytes) lines of one session of ami_login_errors_and_misc.txt."""
    text = (TRANSCRIPTS / "ami_login_errors_and_misc.txt").read_text()
    sessions = re.split(r"^# session \d+.*$", text, flags=re.MULTILINE)[1:]
    line = re.compile(r"^\d\d:\d\d:\d\d (<<|>>) (?:EOF )?(b['\"].*)$")
    out = []
    for match in map(line.match, sessions[number - 1].splitlines()):
        if match:
            out.append((match[1], ast.literal_eval(match[2])))
    return out


def test_failed_login_then_eof() -> None:
    data = [b for d, b in login_misc_session(1) if d == "<<"]
    events = parse_chunks(data)
    assert events[0] == Banner("Asterisk Call Manager/11.0.0")
    denied, failed, closed = events[1:]
    assert isinstance(denied, Response) and denied.message == "Permission denied"
    assert isinstance(failed, Response) and not failed.ok
    assert failed.message == "Authentication failed"
    assert closed == Closed()


def test_good_session_ping_getvar_and_goodbye() -> None:
    data = [b for d, b in login_misc_session(2) if d == "<<"]
    _banner, _login, pong, getvar, bad, bye = parse_chunks(data)[:-1]
    assert isinstance(pong, Response) and pong["Ping"] == "Pong"
    assert getvar["Value"] == ""  # type: ignore[index]
    assert not bad.ok  # type: ignore[union-attr]
    assert bye.status == "Goodbye"  # type: ignore[union-attr]


def test_cyrillic_name_split_mid_character() -> None:
    name = "Иван Петров"
    packet = f"Event: Newchannel\r\nCallerIDName: {name}\r\nUniqueid: 1.1\r\n\r\n".encode()
    middle = packet.index(name.encode()) + 1  # inside the 2-byte "И"
    for cut in [middle, *range(1, len(packet))]:
        events = parse_chunks([packet[:cut], packet[cut:]], expect_banner=False)
        assert events[0]["CallerIDName"] == name  # type: ignore[index]


def test_invalid_utf8_becomes_replacement_character() -> None:
    events = parse_chunks([b"Event: X\r\nCallerIDName: \xff\xd0\r\n\r\n"], expect_banner=False)
    assert events[0]["CallerIDName"] == "\ufffd\ufffd"  # type: ignore[index]


def test_repeated_keys_survive_in_order() -> None:
    packet = (
        b"Event: VarSet\r\nVariable: A=1\r\nActionID: z\r\nvariable: B=2\r\nVARIABLE: C=3\r\n\r\n"
    )
    (event, _) = parse_chunks([packet], expect_banner=False)
    assert isinstance(event, Event)
    assert event.get("Variable") == "A=1"
    assert event.get_all("variable") == ["A=1", "B=2", "C=3"]
    assert event.action_id == "z"
    assert event.fields[3] == ("variable", "B=2")
    assert event.get("Missing") is None and "Missing" not in event


def test_bare_lf_line_ends_and_stray_empty_lines() -> None:
    data = b"Asterisk Call Manager/11.0.0\n\r\nResponse: Success\nActionID: 1\n\nEvent: E\r\n\r\n"
    events = parse_chunks([data])
    assert events == [
        Banner("Asterisk Call Manager/11.0.0"),
        Response((("Response", "Success"), ("ActionID", "1"))),
        Event((("Event", "E"),)),
        Closed(),
    ]


def test_banner_is_not_followed_by_an_empty_line() -> None:
    conn = AMIConnection()
    conn.receive_data(b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\n")
    assert conn.next_event() == Banner("Asterisk Call Manager/11.0.0")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\r\n")
    assert conn.next_event() == Response((("Response", "Success"),))


def test_line_too_long_fails_without_waiting_for_the_end_of_line() -> None:
    conn = AMIConnection(expect_banner=False)
    conn.receive_data(b"Event: X\r\nData: ")
    assert conn.next_event() is NEED_DATA
    with pytest.raises(AMIProtocolError, match="line"):
        for _ in range(MAX_LINE):
            conn.receive_data(b"a")
            assert conn.next_event() is NEED_DATA
    with pytest.raises(AMIProtocolError):
        conn.next_event()  # the error sticks


def test_packet_too_large_fails() -> None:
    conn = AMIConnection(expect_banner=False)
    line = b"Variable: " + b"x" * 1000 + b"\r\n"
    conn.receive_data(b"Event: X\r\n")
    with pytest.raises(AMIProtocolError, match="packet"):
        for _ in range(MAX_PACKET // len(line) + 2):
            conn.receive_data(line)
            assert conn.next_event() is NEED_DATA


def test_a_big_feed_of_small_packets_is_fine() -> None:
    packet = b"Event: Tick\r\nN: 1\r\n\r\n"
    conn = AMIConnection(expect_banner=False)
    conn.receive_data(packet * 20_000)  # 440 KB in one read: only one packet is capped
    count = 0
    while conn.next_event() is not NEED_DATA:
        count += 1
    assert count == 20_000


def test_eof_inside_a_packet_is_an_error() -> None:
    conn = AMIConnection()
    conn.receive_data(b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\n")
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), Banner)
    with pytest.raises(AMIProtocolError, match="middle"):
        conn.next_event()


def test_packet_of_unknown_kind_is_an_error() -> None:
    conn = AMIConnection(expect_banner=False)
    conn.receive_data(b"Foo: bar\r\n\r\n")
    with pytest.raises(AMIProtocolError):
        conn.next_event()


def test_originate_response_is_an_event() -> None:
    (event, _) = parse_chunks(
        [b"Event: OriginateResponse\r\nActionID: 7\r\nResponse: Failure\r\nReason: 0\r\n\r\n"],
        expect_banner=False,
    )
    assert isinstance(event, Event) and event.name == "OriginateResponse"


def test_encode_action() -> None:
    data = encode_action("Originate", "a-1", [("Channel", "PJSIP/1@carrier"), ("Variable", "A=1")])
    assert data == (
        b"Action: Originate\r\nActionID: a-1\r\nChannel: PJSIP/1@carrier\r\nVariable: A=1\r\n\r\n"
    )
    assert encode_action("Ping", "p", {"X": "y"}) == b"Action: Ping\r\nActionID: p\r\nX: y\r\n\r\n"
    with pytest.raises(ValueError):
        encode_action("Ping", "p", [("ActionID", "other")])


def test_encode_action_cannot_be_injected() -> None:
    evil = "Svc\r\n\r\nAction: Originate\r\nChannel: PJSIP/666@carrier\n"
    data = encode_action("Setvar", "s1", [("Value", evil), ("Vari\r\nable", "x\0y")])
    actions = parse_chunks([data], expect_banner=False)[:-1]
    assert len(actions) == 1
    (action,) = actions
    assert isinstance(action, Action) and action.name == "Setvar"
    assert action["Value"] == "SvcAction: OriginateChannel: PJSIP/666@carrier"
    assert action["Variable"] == "xy"


_text = st.text(st.characters(codec="utf-8"), max_size=30)


@given(st.lists(st.tuples(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True), _text)))
def test_encode_then_parse_round_trips(fields: list[tuple[str, str]]) -> None:
    fields = [(k, v) for k, v in fields if k.lower() not in ("action", "actionid")]
    actions = parse_chunks([encode_action("Test", "id", fields)], expect_banner=False)[:-1]
    assert len(actions) == 1
    clean = [(k, v.replace("\r", "").replace("\n", "").replace("\0", "")) for k, v in fields]
    assert actions[0].fields[2:] == tuple(clean)  # type: ignore[attr-defined]


def test_event_list_helpers() -> None:
    start = Response((("Response", "Success"), ("EventList", "start")))
    plain = Response((("Response", "Success"),))
    item = Event((("Event", "CoreShowChannel"),))
    done = Event((("Event", "CoreShowChannelsComplete"), ("EventList", "Complete")))
    assert starts_event_list(start) and not starts_event_list(plain)
    assert ends_event_list(done) and not ends_event_list(item)
