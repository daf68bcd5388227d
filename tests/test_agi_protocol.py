"""The sans-IO FastAGI protocol (zvonok_agi.agi.protocol).

1. Replay of every recorded AGI session (tests/fixtures/asterisk/agi_*.txt) through a
   ServerConnection, whole, byte by byte and in random chunks: the exact event sequence.
2. Explicit cases of the env block, the replies, EOF, HANGUP and the bounds.
3. Command encoding: round trip through Asterisk's parse_args, size cap, never raising on content.
4. AsteriskConnection and ServerConnection talking to each other in memory.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transcripts import (
    FROM_ASTERISK,
    FROM_SERVER,
    TRANSCRIPTS_DIR,
    Entry,
    agi_transcripts,
    read_sessions,
)
from zvonok_agi.agi.protocol import (
    AGI_BUF_LEN,
    HANGUP_LINE,
    MAX_COMMAND_BYTES,
    MAX_ENV_BYTES,
    MAX_ENV_LINES,
    MAX_ENV_VALUE,
    MAX_LINE,
    MAX_REPLY_LINES,
    NEED_DATA,
    AGIProtocolError,
    AsteriskConnection,
    Closed,
    Command,
    Environment,
    Hangup,
    Reply,
    ServerConnection,
    ServerState,
    _scan_command,
    encode_command,
    encode_environment,
    encode_reply,
    parse_command,
)

# --- expected sessions ------------------------------------------------------------------------

# The env block of agi_env_and_commands.txt, in wire order; the other sessions differ in a few keys.
BASE_ENV = {
    "agi_network": "yes",
    "agi_network_script": "route",
    "agi_request": "agi://127.0.0.1:4573/route",
    "agi_channel": "PJSIP/carrier-00000003",
    "agi_language": "en",
    "agi_type": "PJSIP",
    "agi_uniqueid": "1795749422.3",
    "agi_version": "22.10.1",
    "agi_callerid": "79161234567",
    "agi_calleridname": "Lab Caller",
    "agi_callingpres": "0",
    "agi_callingani2": "0",
    "agi_callington": "0",
    "agi_callingtns": "0",
    "agi_dnid": "74951234567",
    "agi_rdnis": "unknown",
    "agi_context": "from-carrier",
    "agi_extension": "74951234567",
    "agi_priority": "1",
    "agi_enhanced": "0.0",
    "agi_accountcode": "",
    "agi_threadid": "140620542392000",
}


def env(**changes: str) -> dict[str, str]:
    return {**BASE_ENV, **changes}


ARGS_ENV = env(
    agi_network_script="route?mode=args",
    agi_request="agi://127.0.0.1:4573/route?mode=args",
    agi_channel="PJSIP/carrier-00000004",
    agi_uniqueid="1795749434.4",
    agi_callerid="79160000002",
    agi_dnid="7770001",
    agi_extension="7770001",
    agi_arg_1="7770001",
    agi_arg_2="two words",
    agi_arg_3="quoted,comma",
    agi_arg_4="",
    agi_arg_5="last",
)


@dataclass(frozen=True)
class Sent:
    """Marker: the server sent this command (as written in the transcript)."""

    line: str


@dataclass(frozen=True)
class Refused:
    """Marker: send_command refused this command (AGIProtocolError)."""

    line: str


def mset_env(channel: str, uniqueid: str, callerid: str, did: str) -> dict[str, str]:
    """A session of agi_mset.txt: the project's own dialplan, on port 4576."""
    return env(
        agi_network_script="inbound",
        agi_request="agi://127.0.0.1:4576/inbound",
        agi_channel=channel,
        agi_uniqueid=uniqueid,
        agi_callerid=callerid,
        agi_dnid=did,
        agi_context="zvonok-from-carrier",
        agi_extension=did,
        agi_priority="2",
        agi_threadid="140227757233856",
    )


def mset_session(env_block: dict[str, str], argument: str) -> list[object]:
    """EXEC MSet answered with the application's return, then ZV_DECIDED read back."""
    return [
        Environment(env_block),
        Sent(f'EXEC "MSet" "{argument}"'),
        R("200 result=0", "0"),
        Sent('GET VARIABLE "ZV_DECIDED"'),
        R("200 result=1 (1)", "1", "1"),
        Closed(complete=True),
    ]


def R(line: str, result: str | None = None, data: str | None = None, **extra: str) -> Reply:
    return Reply(int(line[:3]), result, data, extra, (line,))


DEAD = "511 Command Not Permitted on a dead channel or intercept routine"
USAGE_520 = (
    "520-Invalid command syntax.  Proper usage follows:",
    (
        "Returns <literal>0</literal> if <replaceable>variablename</replaceable> is not set. "
        "Returns <literal>1</literal> if <replaceable>variablename</replaceable> is set and "
        "returns the variable in parentheses."
    ),
    "Example return code: 200 result=1 (testvariable)",
    "520 End of proper usage.",
)

EXPECTED: dict[str, list[object]] = {
    "agi_env_and_commands.txt": [
        Environment(BASE_ENV),
        Sent("GET VARIABLE CALLERID(num)"),
        R("200 result=1 (79161234567)", "1", "79161234567"),
        Sent("SET VARIABLE ROUTE_TARGET campaign-inbound"),
        R("200 result=1", "1"),
        Sent('EXEC Verbose "hello"'),
        R("200 result=0", "0"),
        Sent("GET FULL VARIABLE ${CHANNEL}"),
        R("200 result=1 (PJSIP/carrier-00000003)", "1", "PJSIP/carrier-00000003"),
        Sent("GET VARIABLE ROUTE_TARGET"),
        R("200 result=1 (campaign-inbound)", "1", "campaign-inbound"),
        Sent("GET VARIABLE NO_SUCH_VAR"),
        R("200 result=0", "0"),
        Sent("GET FULL VARIABLE ${CALLERID(all)}"),
        R('200 result=1 ("Lab Caller" <79161234567>)', "1", '"Lab Caller" <79161234567>'),
        Sent("CHANNEL STATUS"),
        R("200 result=4", "4"),
        Sent("EXEC NoSuchApplication foo"),
        R("200 result=-2", "-2"),
        Sent("THIS IS NOT A COMMAND"),
        R("510 Invalid or unknown command"),
        Sent("GET VARIABLE"),
        Reply(520, lines=USAGE_520),
        Sent('SET VARIABLE MULTI "a b c"'),
        R("200 result=1", "1"),
        Sent("GET VARIABLE MULTI"),
        R("200 result=1 (a b c)", "1", "a b c"),
        Sent("EXEC Goto campaign-inbound,s,1"),
        R("200 result=0", "0"),
    ],
    "agi_env_with_args.txt": [Environment(ARGS_ENV)],
    "agi_hangup_midway.txt": [
        Environment(env(agi_channel="PJSIP/carrier-00000005", agi_uniqueid="1795749440.5")),
        Sent("GET VARIABLE CALLERID(num)"),
        R("200 result=1 (79161234567)", "1", "79161234567"),
        Hangup(),
        Sent("GET VARIABLE CALLERID(num)"),
        R("200 result=1 (79161234567)", "1", "79161234567"),
        Sent('EXEC Verbose "after-hangup"'),
        R("200 result=0", "0"),
        Sent("GET FULL VARIABLE ${CHANNEL}"),
        R("200 result=1 (PJSIP/carrier-00000005)", "1", "PJSIP/carrier-00000005"),
        Sent("CHANNEL STATUS"),
        R(DEAD),
        Sent("ANSWER"),
        R(DEAD),
        Sent("SET VARIABLE ROUTE_TARGET campaign-inbound"),
        R("200 result=1", "1"),
    ],
    "agi_hangup_midway_agiexitonhangup.txt": [
        Environment(
            env(
                agi_channel="PJSIP/carrier-00000006",
                agi_uniqueid="1795749455.6",
                agi_dnid="7780001",
                agi_extension="7780001",
                agi_priority="2",
            )
        ),
        Sent("GET VARIABLE CALLERID(num)"),
        R("200 result=1 (79161234567)", "1", "79161234567"),
        # AGIEXITONHANGUP=yes: HANGUP twice, then Asterisk closes the socket.
        Hangup(),
        Hangup(),
        Closed(complete=True),
        Refused("GET VARIABLE CALLERID(num)"),
    ],
    "agi_more_commands.txt": [
        Environment(
            env(
                agi_channel="PJSIP/carrier-00000010",
                agi_uniqueid="1795749633.16",
                agi_dnid="74951234568",
                agi_extension="74951234568",
            )
        ),
        Sent('SET VARIABLE PAREN "a(b)c) d"'),
        R("200 result=1", "1"),
        Sent("GET VARIABLE PAREN"),
        R("200 result=1 (a(b)c) d)", "1", "a(b)c) d"),
        Sent("NOOP some text"),
        R("200 result=0", "0"),
        Sent('VERBOSE "verbose via AGI" 1'),
        R("200 result=1", "1"),
        Sent("DATABASE GET nofamily nokey"),
        R("200 result=0", "0"),
        Sent('STREAM FILE beep ""'),
        R("200 result=0 endpos=3404", "0", endpos="3404"),
        Sent("ANSWER"),
        R("200 result=0", "0"),
        Sent("CHANNEL STATUS"),
        R("200 result=6", "6"),
        Sent('STREAM FILE beep "#"'),
        R("200 result=0 endpos=3404", "0", endpos="3404"),
        Sent('STREAM FILE no-such-sound-file ""'),
        R("200 result=-1 endpos=0", "-1", endpos="0"),
        Sent("WAIT FOR DIGIT 200"),
        R("200 result=0", "0"),
        Sent("GET DATA beep 300 2"),
        R("200 result= (timeout)", "", "timeout"),
        Sent("SET CALLERID 70000000000"),
        R("200 result=1", "1"),
        Sent("GET FULL VARIABLE ${CALLERID(num)}"),
        R("200 result=1 (70000000000)", "1", "70000000000"),
        Sent("HANGUP"),  # the AGI HANGUP command: answered, the HANGUP line comes later
        R("200 result=1", "1"),
        Sent("CHANNEL STATUS"),
        Hangup(),  # between the command and its reply
        R(DEAD),
        Sent("GET VARIABLE CALLERID(num)"),
        R("200 result=1 (70000000000)", "1", "70000000000"),
    ],
    "agi_mset.txt:s1": mset_session(
        mset_env("PJSIP/carrier-00000018", "1795968049.24", "79161230003", "74951234567"),
        "ZV_ROUTE=inbound,ZV_CAMPAIGN=support,ZV_TARGET_CONTEXT=zvonok-inbound-support,"
        "ZV_TARGET_EXTEN=s,ZV_REASON=no recent call to this caller from this number; "
        "inbound campaign support,ZV_DID=74951234567,ZV_CALLER=79161230003,ZV_DECIDED=1",
    ),
    "agi_mset.txt:s2": mset_session(
        mset_env("PJSIP/carrier-00000019", "1795968052.25", "79167654321", "74951234568"),
        "ZV_ROUTE=inbound,ZV_CAMPAIGN=sales-desk,ZV_TARGET_CONTEXT=zvonok-inbound-sales-desk,"
        "ZV_TARGET_EXTEN=s,ZV_REASON=callback not taken: a callback was already routed to the "
        "campaign; inbound campaign sales-desk,ZV_DID=74951234568,ZV_CALLER=79167654321,"
        "ZV_DECIDED=1",
    ),
}
# (hungup, pending) at the end of each session
END_STATE = {
    "agi_env_and_commands.txt": (False, False),
    "agi_env_with_args.txt": (False, False),
    "agi_hangup_midway.txt": (True, False),
    "agi_hangup_midway_agiexitonhangup.txt": (True, False),
    "agi_more_commands.txt": (True, False),
    "agi_mset.txt:s1": (False, False),
    "agi_mset.txt:s2": (False, False),
}
# Asterisk never connected: these hold Asterisk's log and SIP only.
NO_SESSION = {"agi_server_down.txt", "agi_server_unreachable_timeout.txt"}


# --- replay -----------------------------------------------------------------------------------

Chunker = Callable[[bytes], Iterable[bytes]]


def whole(data: bytes) -> list[bytes]:
    return [data]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def runs(entries: list[Entry]) -> list[Entry]:
    """Consecutive `<<` chunks joined (an EOF kept apart); `>>` entries as they are."""
    out: list[Entry] = []
    for entry in entries:
        joinable = entry.direction == FROM_ASTERISK and entry.data
        if joinable and out and out[-1].direction == FROM_ASTERISK and out[-1].data:
            out[-1] = Entry(FROM_ASTERISK, out[-1].data + entry.data)
        else:
            out.append(entry)
    return out


def split_command(line: str) -> tuple[str, list[str]]:
    """Leading upper-case words are the verb, the rest its arguments."""
    words = parse_command(line)
    n = 0
    while n < len(words) and re.fullmatch("[A-Z]+", words[n]):
        n += 1
    return " ".join(words[:n]), words[n:]


def drain(conn: ServerConnection) -> list[object]:
    events: list[object] = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, Closed):
            break
    return events


def replay(entries: list[Entry], chunker: Chunker) -> tuple[list[object], ServerConnection]:
    conn = ServerConnection()
    seen: list[object] = []
    for direction, data in runs(entries):
        if direction == FROM_SERVER and not data:
            continue  # the server closed: nothing for the connection to parse
        if direction == FROM_SERVER:
            assert conn.next_event() in (NEED_DATA, Closed(complete=True))
            line = data.decode()
            assert line.endswith("\n")
            assert line.count("\n") == 1
            line = line[:-1]
            verb, args = split_command(line)
            try:
                sent = conn.send_command(verb, *args)
            except AGIProtocolError:
                seen.append(Refused(line))
                continue
            # Not the same bytes (we quote every argument), the same words for Asterisk.
            assert parse_command(sent.decode()[:-1]) == parse_command(line)
            seen.append(Sent(line))
        elif not data:
            closed = [event for event in seen if isinstance(event, Closed)]
            conn.receive_data(b"")
            if closed:  # a second EOF changes nothing
                assert conn.next_event() == closed[0]
            else:
                seen.extend(drain(conn))
        else:
            for chunk in chunker(data):
                conn.receive_data(chunk)
                seen.extend(drain(conn))
    return seen, conn


def session_transcripts() -> list[str]:
    """One name per recorded session: the file's name, and `:<session>` after it when the
    file holds several (agi_mset.txt:s1)."""
    names = []
    for path in agi_transcripts():
        sessions = read_sessions(path)
        if len(sessions) == 1:
            names.append(path.name)
        else:
            names += [f"{path.name}:{session}" for session in sessions]
    return names


def load(name: str) -> list[Entry]:
    file, _, session = name.partition(":")
    sessions = read_sessions(TRANSCRIPTS_DIR / file)
    if not session:
        assert len(sessions) <= 1
        return next(iter(sessions.values()), [])
    return sessions[session]


def test_transcripts_are_there() -> None:
    names = {path.name for path in agi_transcripts()}
    assert names >= NO_SESSION | {name.partition(":")[0] for name in EXPECTED}
    assert set(session_transcripts()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(NO_SESSION))
def test_transcript_without_session(name: str) -> None:
    assert load(name) == []


@pytest.mark.parametrize("name", session_transcripts())
@pytest.mark.parametrize("chunker", [whole, byte_by_byte], ids=["whole", "bytes"])
def test_replay_transcript(name: str, chunker: Chunker) -> None:
    assert name in EXPECTED, f"new transcript {name}: add its expected events"
    seen, conn = replay(load(name), chunker)
    assert seen == EXPECTED[name]
    assert (conn.hungup, conn.pending) == END_STATE[name]


@pytest.mark.parametrize("name", session_transcripts())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rnd=st.randoms(use_true_random=False))
def test_replay_transcript_random_chunks(name: str, rnd: random.Random) -> None:
    def chunker(data: bytes) -> list[bytes]:
        chunks, i = [], 0
        while i < len(data):
            size = rnd.randint(1, 48)
            chunks.append(data[i : i + size])
            i += size
        return chunks

    assert name in EXPECTED, f"new transcript {name}: add its expected events"
    seen, _ = replay(load(name), chunker)
    assert seen == EXPECTED[name]
    assert seen == replay(load(name), whole)[0] == replay(load(name), byte_by_byte)[0]


def test_transcript_environment_fields() -> None:
    args_env = EXPECTED["agi_env_with_args.txt"][0]
    assert isinstance(args_env, Environment)
    seen, _ = replay(load("agi_env_with_args.txt"), whole)
    env_event = seen[0]
    assert isinstance(env_event, Environment)
    assert env_event.script == "route"
    assert dict(env_event.query) == {"mode": "args"}
    assert env_event.args == ("7770001", "two words", "quoted,comma", "", "last")
    assert env_event.get("agi_accountcode", "x") == ""
    assert env_event.get("agi_nothing") == ""
    assert list(env_event.variables) == list(ARGS_ENV)  # wire order kept

    seen, _ = replay(load("agi_env_and_commands.txt"), whole)
    plain = seen[0]
    assert isinstance(plain, Environment)
    assert (plain.script, dict(plain.query), plain.args) == ("route", {}, ())


def test_asterisk_side_encodes_like_asterisk() -> None:
    """encode_environment and encode_reply give the recorded bytes exactly."""
    entries = load("agi_env_and_commands.txt")
    env_bytes = b"".join(e.data for e in entries[: len(BASE_ENV) + 1])
    assert encode_environment(BASE_ENV) == env_bytes

    from_asterisk = {e.data for e in load("agi_more_commands.txt") if e.direction == "<<"}
    assert encode_reply(200, "1", "a(b)c) d") in from_asterisk
    assert encode_reply(200, "0", extra={"endpos": "3404"}) in from_asterisk
    assert encode_reply(200, "", "timeout") in from_asterisk
    assert encode_reply(511) in from_asterisk
    assert encode_reply() == b"200 result=1\n"
    assert encode_reply(510) == b"510 Invalid or unknown command\n"
    usage = "\n".join(USAGE_520[1:3])
    block = b"".join(e.data for e in entries if e.data.startswith((b"520", b"Returns", b"Exa")))
    assert encode_reply(520, data=usage) == block


def test_asterisk_connection_reads_the_recorded_commands() -> None:
    for name in session_transcripts():
        asterisk = AsteriskConnection()
        for direction, data in load(name):
            if direction != FROM_SERVER or not data:
                continue
            asterisk.receive_data(data)
            command = asterisk.next_event()
            assert command == Command(tuple(parse_command(data.decode()[:-1])), data.decode()[:-1])
            assert asterisk.next_event() is NEED_DATA
            asterisk.send_reply()


# --- explicit cases ---------------------------------------------------------------------------

SHORT_ENV = b"agi_network: yes\nagi_network_script: route\n\n"


def server(env_block: bytes = SHORT_ENV) -> ServerConnection:
    conn = ServerConnection()
    conn.receive_data(env_block)
    assert isinstance(conn.next_event(), Environment)
    return conn


def env_of(block: bytes) -> Environment:
    conn = ServerConnection()
    conn.receive_data(block)
    event = conn.next_event()
    assert isinstance(event, Environment)
    return event


def reply_to(line: bytes) -> Reply:
    conn = server()
    conn.send_command("NOOP")
    conn.receive_data(line)
    event = conn.next_event()
    assert isinstance(event, Reply)
    assert not conn.pending
    return event


def test_empty_values_keep_their_space() -> None:
    event = env_of(b"agi_accountcode: \nagi_rdnis:\nagi_calleridname:  Bob\nagi_callerid:123\n\n")
    assert dict(event.variables) == {
        "agi_accountcode": "",
        "agi_rdnis": "",
        "agi_calleridname": " Bob",  # only the one space after ':' is the separator
        "agi_callerid": "123",
    }


def test_unknown_keys_ignored() -> None:
    event = env_of(
        b"agi_channel: PJSIP/x\nagi_foo: 1\nAGI_DNID: 2\nagi_arg_65: 3\nagi_arg_64: 4\n"
        b"x-evil: 5\n\n"
    )
    assert dict(event.variables) == {"agi_channel": "PJSIP/x", "agi_arg_64": "4"}


def test_first_occurrence_wins_and_a_repeated_key_marks_the_block_tampered() -> None:
    event = env_of(b"agi_callerid: 111\nagi_callerid: 222\nagi_arg_1: a\nagi_arg_1: b\n\n")
    assert dict(event.variables) == {"agi_callerid": "111", "agi_arg_1": "a"}
    assert event.tampered
    assert not env_of(b"agi_callerid: 111\nagi_foo: 1\nagi_foo: 2\n\n").tampered  # unknown keys


def test_values_capped_and_decoded() -> None:
    name = "Ж" * 1000
    event = env_of(f"agi_calleridname: {name}\nagi_callerid: \xff\n\n".encode())
    assert event.get("agi_calleridname") == "Ж" * MAX_ENV_VALUE
    assert event.get("agi_callerid") == "ÿ"  # UTF-8 text
    bad = env_of(b"agi_callerid: a\xffb\n\n")
    assert bad.get("agi_callerid") == "a\ufffdb"


def test_environment_args_query_script() -> None:
    event = env_of(
        b"agi_network_script: /route/in?b=2&a=1&b=3&e=&x=%D0%96\n"
        b"agi_arg_1: one\nagi_arg_2: \nagi_arg_4: four\n\n"
    )
    assert event.script == "route/in"
    assert dict(event.query) == {"b": "2", "a": "1", "e": "", "x": "Ж"}
    assert event.args == ("one", "")  # stops at the first missing index
    assert env_of(b"\n") == Environment({})
    assert (env_of(b"\n").script, env_of(b"\n").args) == ("", ())


def test_a_caller_id_holding_line_breaks_marks_the_block_tampered() -> None:
    # Asterisk writes the caller ID raw: its line breaks become lines of the env block.
    event = env_of(
        b"agi_network: yes\nagi_callerid: 7916\nnot a key line\nagi_extension: 74990000000\n"
        b"agi_calleridname: x\nagi_extension: 74951234567\n\n"
    )
    assert event.tampered
    assert event.get("agi_extension") == "74990000000"  # which is why nothing is trusted
    assert not env_of(b"agi_network: yes\nagi_callerid: 7916\n\n").tampered


def test_env_block_too_long_raises() -> None:
    conn = ServerConnection()
    conn.receive_data(b"agi_foo: x\n" * MAX_ENV_LINES)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"agi_foo: x\n")
    with pytest.raises(AGIProtocolError):
        conn.next_event()


RECORDED_ENV = encode_environment(BASE_ENV)


@pytest.mark.parametrize("cut", range(1, len(RECORDED_ENV)))
def test_the_env_block_is_read_in_one_phase_wherever_the_bytes_are_cut(cut: int) -> None:
    conn = ServerConnection()
    conn.receive_data(RECORDED_ENV[:cut])
    assert conn.next_event() is NEED_DATA
    assert conn.state is ServerState.ENV
    conn.receive_data(RECORDED_ENV[cut:] + HANGUP_LINE)  # what follows it stays unread
    event = conn.next_event()
    assert event == Environment(BASE_ENV)
    assert conn.state is ServerState.IDLE
    assert conn.next_event() == Hangup()


def test_session_states_in_order() -> None:
    conn = ServerConnection()
    seen = [conn.state]
    conn.receive_data(SHORT_ENV)
    conn.next_event()
    seen.append(conn.state)
    conn.send_command("GET VARIABLE")
    seen.append(conn.state)
    conn.receive_data(b"520-Invalid command syntax.  Proper usage follows:\n")
    assert conn.next_event() is NEED_DATA
    seen.append(conn.state)
    conn.receive_data(b"usage\n520 End of proper usage.\n")
    assert conn.next_event().code == 520
    seen.append(conn.state)
    assert seen == [
        ServerState.ENV,
        ServerState.IDLE,
        ServerState.AWAITING_REPLY,
        ServerState.IN_BLOCK,
        ServerState.IDLE,
    ]


def test_an_empty_line_first_is_an_empty_env_block() -> None:
    for block in (b"\n", b"\r\n"):
        assert env_of(block) == Environment({})


def test_env_block_of_too_many_bytes_raises_before_it_ends() -> None:
    conn = ServerConnection()
    line = b"agi_calleridname: " + b"x" * 4000 + b"\n"
    for _ in range(MAX_ENV_BYTES // len(line)):
        conn.receive_data(line)
        assert conn.next_event() is NEED_DATA
    conn.receive_data(line)
    with pytest.raises(AGIProtocolError, match="bytes"):
        conn.next_event()


def test_env_line_too_long_in_one_chunk_raises() -> None:
    conn = ServerConnection()
    conn.receive_data(b"agi_callerid: " + b"7" * MAX_LINE + b"\n\n")
    with pytest.raises(AGIProtocolError, match="line longer"):
        conn.next_event()


def test_crlf_line_endings() -> None:
    conn = ServerConnection()
    conn.receive_data(b"agi_network: yes\r\nagi_accountcode: \r\n\r\n")
    event = conn.next_event()
    assert isinstance(event, Environment)
    assert dict(event.variables) == {"agi_network": "yes", "agi_accountcode": ""}
    conn.send_command("NOOP")
    conn.receive_data(b"HANGUP\r\n200 result=0\r\n")
    assert conn.next_event() == Hangup()
    assert conn.next_event() == R("200 result=0", "0")


def test_eof_before_env_block_ends() -> None:
    conn = ServerConnection()
    conn.receive_data(b"agi_network: yes\nagi_chan")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() == Closed(complete=False)
    assert conn.next_event() == Closed(complete=False)  # for ever
    with pytest.raises(AGIProtocolError):
        conn.send_command("NOOP")
    # and only complete lines of it: an env block that did end is still produced first
    conn = ServerConnection()
    conn.receive_data(SHORT_ENV)
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), Environment)
    assert conn.next_event() == Closed(complete=True)


def test_eof_in_the_middle_of_a_reply() -> None:
    conn = server()
    conn.send_command("GET", "VARIABLE")
    conn.receive_data(b"HANGUP\n200 result=1 (ab")
    conn.receive_data(b"")
    assert conn.next_event() == Hangup()
    assert conn.next_event() == Closed(complete=False)
    assert conn.pending  # the reply never came
    assert conn.next_event() == Closed(complete=False)
    with pytest.raises(AGIProtocolError):
        conn.receive_data(b"more")


def test_eof_in_a_520_block() -> None:
    conn = server()
    conn.send_command("GET VARIABLE")
    conn.receive_data(b"520-Invalid command syntax.  Proper usage follows:\nUsage\n")
    conn.receive_data(b"")
    assert conn.next_event() == Closed(complete=False)


def test_hangup_between_command_and_reply() -> None:
    conn = server()
    conn.send_command("CHANNEL STATUS")
    conn.receive_data(b"HANGUP\n")
    assert conn.next_event() == Hangup()
    assert conn.hungup
    assert conn.pending
    with pytest.raises(AGIProtocolError):  # still waiting for the reply
        conn.send_command("NOOP")
    conn.receive_data(DEAD.encode() + b"\n")
    assert conn.next_event() == R(DEAD)
    assert conn.hungup
    assert not conn.pending
    conn.send_command("GET VARIABLE", "X")  # GET VARIABLE still works after a hangup


def test_hangup_while_idle() -> None:
    conn = server()
    conn.receive_data(b"HANGUP\nHANGUP\n")
    assert [conn.next_event(), conn.next_event(), conn.next_event()] == [
        Hangup(),
        Hangup(),
        NEED_DATA,
    ]
    assert conn.hungup
    assert not conn.pending


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_520_block_in_chunks(size: int) -> None:
    block = (
        b"520-Invalid command syntax.  Proper usage follows:\n"
        b"Usage: GET VARIABLE <variablename>\n"
        b"\n"  # an empty line inside the block is part of it
        b"HANGUP\n"  # so is anything else until the `520 ` line
        b"520 End of proper usage.\n"
    )
    conn = server()
    conn.send_command("GET VARIABLE")
    events = []
    for i in range(0, len(block), size):
        conn.receive_data(block[i : i + size])
        events.extend(drain(conn))
    lines = tuple(block.decode().splitlines())
    assert events == [Reply(520, lines=lines)]
    assert not conn.pending
    assert not conn.hungup


def test_one_line_520() -> None:
    line = "520 Invalid command syntax.  Proper usage not available."
    assert reply_to(line.encode() + b"\n") == R(line)


def test_520_block_too_long_raises() -> None:
    conn = server()
    conn.send_command("GET VARIABLE")
    conn.receive_data(b"520-usage\n" + b"line\n" * MAX_REPLY_LINES)
    with pytest.raises(AGIProtocolError):
        drain(conn)


def test_overlong_line_raises_without_buffering_it() -> None:
    conn = server()
    conn.send_command("NOOP")
    chunk = b"x" * 1024
    for _ in range(MAX_LINE // len(chunk)):
        conn.receive_data(chunk)
    assert conn.next_event() is NEED_DATA
    with pytest.raises(AGIProtocolError, match="longer than"):  # as soon as it is too long
        conn.receive_data(chunk)
    with pytest.raises(AGIProtocolError):
        conn.next_event()


def test_overlong_line_in_one_chunk_raises() -> None:
    conn = server()
    conn.send_command("NOOP")
    conn.receive_data(b"200 result=1 (" + b"x" * MAX_LINE + b")\n")
    with pytest.raises(AGIProtocolError):
        conn.next_event()


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_line_of_max_length_is_fine(ending: bytes) -> None:
    line = b"200 result=1 (" + b"x" * (MAX_LINE - 15) + b")"
    assert len(line) == MAX_LINE
    assert reply_to(line + ending).data == "x" * (MAX_LINE - 15)


def test_reply_with_no_pending_command_raises() -> None:
    conn = server()
    conn.receive_data(b"200 result=1\n")
    with pytest.raises(AGIProtocolError):
        conn.next_event()


def test_not_a_reply_raises() -> None:
    conn = server()
    conn.send_command("NOOP")
    conn.receive_data(b"hello there\n")
    with pytest.raises(AGIProtocolError):
        conn.next_event()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("200 result=1", R("200 result=1", "1")),
        ("200 result= (timeout)", R("200 result= (timeout)", "", "timeout")),
        ("200 result=0 endpos=3404", R("200 result=0 endpos=3404", "0", endpos="3404")),
        ("200 result=-1 endpos=0", R("200 result=-1 endpos=0", "-1", endpos="0")),
        ("200 result=1 (a(b)c) d)", R("200 result=1 (a(b)c) d)", "1", "a(b)c) d")),
        ("200 result=1 ()", R("200 result=1 ()", "1", "")),
        ("200 result=1 (x) endpos=5", R("200 result=1 (x) endpos=5", "1", "x", endpos="5")),
        ("200 result=1 (x", R("200 result=1 (x", "1", "x")),
        ("200 result=1 (Жук)", R("200 result=1 (Жук)", "1", "Жук")),
        ("510 Invalid or unknown command", R("510 Invalid or unknown command")),
        (DEAD, R(DEAD)),
        ("200", R("200")),
    ],
)
def test_reply_parsing(line: str, expected: Reply) -> None:
    reply = reply_to(line.encode() + b"\n")
    assert reply == expected
    assert reply.ok == (expected.code == 200)


def test_send_command_states() -> None:
    conn = ServerConnection()
    with pytest.raises(AGIProtocolError):  # before the env block
        conn.send_command("NOOP")
    conn.receive_data(SHORT_ENV)
    with pytest.raises(AGIProtocolError):  # received but the Environment event not yet out
        conn.send_command("NOOP")
    assert isinstance(conn.next_event(), Environment)
    assert conn.send_command("NOOP") == b"NOOP\n"
    assert conn.pending
    with pytest.raises(AGIProtocolError):  # the reply is pending
        conn.send_command("NOOP")
    conn.receive_data(b"200 result=0\n")
    conn.next_event()
    conn.receive_data(b"")
    assert conn.next_event() == Closed()
    with pytest.raises(AGIProtocolError):  # after Closed
        conn.send_command("NOOP")


# Mostly pieces of real replies, so that the parser gets deep before it meets garbage.
PIECES = [b"200 result=1", b" (", b")", b"endpos=1", b"HANGUP", b"520-", b"520 ", b"510 x"]
protocolish = st.lists(
    st.one_of(st.sampled_from(PIECES), st.sampled_from([b"\n", b"\r\n", b"\r"]), st.binary()),
    max_size=60,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(protocolish, st.lists(st.integers(1, 200), min_size=1))
def test_arbitrary_bytes_never_hang(data: bytes, sizes: list[int]) -> None:
    conn = ServerConnection()
    calls, i, k = 0, 0, 0
    try:
        conn.receive_data(SHORT_ENV)
        while i < len(data):
            conn.receive_data(data[i : i + sizes[k % len(sizes)]])
            i += sizes[k % len(sizes)]
            k += 1
            while True:
                calls += 1
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, Environment) and not conn.pending:
                    conn.send_command("NOOP")
                if isinstance(event, Reply):
                    conn.send_command("NOOP")
        conn.receive_data(b"")
        assert isinstance(drain(conn)[-1], Closed)
    except AGIProtocolError:
        pass
    assert calls <= len(data) + len(SHORT_ENV) + 2 * k + 2


# --- encoding ---------------------------------------------------------------------------------


def stripped(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", "", text)


def test_encode_command_examples() -> None:
    assert encode_command("ANSWER") == b"ANSWER\n"
    assert encode_command("SET VARIABLE", "ZV_ROUTE", "inbound") == (
        b'SET VARIABLE "ZV_ROUTE" "inbound"\n'
    )
    assert encode_command("EXEC", "Verbose", 'say "hi"\\') == (
        b'EXEC "Verbose" "say \\"hi\\"\\\\"\n'
    )
    assert encode_command("STREAM FILE", "beep", "") == b'STREAM FILE "beep" ""\n'
    assert encode_command("SET VARIABLE", "X", "a\r\nb\x00c\x7f\td") == b'SET VARIABLE "X" "abcd"\n'
    assert encode_command("SET VARIABLE", "X", "\udcff") == b'SET VARIABLE "X" "?"\n'


@pytest.mark.parametrize("verb", ["", "set variable", "GET  VARIABLE", " NOOP", "NOOP\n", "Ж"])
def test_encode_command_rejects_bad_verbs(verb: str) -> None:
    with pytest.raises(ValueError, match="verb"):
        encode_command(verb)


def test_encode_command_rejects_non_text() -> None:
    with pytest.raises(TypeError):
        encode_command("WAIT FOR DIGIT", 200)  # type: ignore[arg-type]


@settings(max_examples=500)
@given(st.text(max_size=120), st.text(max_size=120))
def test_encode_parse_round_trip(name: str, value: str) -> None:
    line = encode_command("SET VARIABLE", name, value).decode()
    assert parse_command(line.rstrip("\n"))[2:] == [stripped(name), stripped(value)]


@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=50),
            st.text(min_size=200, max_size=3000),
            st.text(alphabet='\\"Ж\U0001f600 x', min_size=300, max_size=2000),
        ),
        max_size=6,
    )
)
def test_encoded_line_invariants(args: list[str]) -> None:
    data = encode_command("EXEC", *args)
    assert len(data) <= MAX_COMMAND_BYTES
    text = data.decode("utf-8")  # valid UTF-8
    assert text.count("\n") == 1
    assert text.endswith("\n")
    words = parse_command(text[:-1])
    assert words[0] == "EXEC"
    assert len(words) == len(args) + 1
    for sent, arg in zip(words[1:], args, strict=True):
        assert stripped(arg).startswith(sent)  # only ever shortened at the end


def test_long_argument_is_shortened_not_raised() -> None:
    value = "v" * 10_000
    data = encode_command("SET VARIABLE", "NAME", value)
    assert len(data) == MAX_COMMAND_BYTES
    name, sent = parse_command(data.decode()[:-1])[2:]
    assert name == "NAME"  # the short one is kept whole
    assert sent == "v" * (MAX_COMMAND_BYTES - len('SET VARIABLE "NAME" ""\n'))


def test_a_command_of_exactly_the_limit_is_kept_and_one_byte_more_is_cut() -> None:
    room = MAX_COMMAND_BYTES - len('SET VARIABLE "X" ""\n')
    exact = encode_command("SET VARIABLE", "X", "v" * room)
    assert len(exact) == MAX_COMMAND_BYTES
    assert parse_command(exact.decode()[:-1])[3] == "v" * room
    assert encode_command("SET VARIABLE", "X", "v" * (room + 1)) == exact
    # an escaped quote takes two bytes: one byte over, and it goes
    quoted = encode_command("SET VARIABLE", "X", "v" * (room - 1) + '"')
    assert parse_command(quoted.decode()[:-1])[3] == "v" * (room - 1)


@pytest.mark.parametrize("unit", ["Ж", "\U0001f600", "\\", '"', 'a"\\Ж'])
def test_shortening_never_cuts_a_character_or_an_escape(unit: str) -> None:
    value = unit * 5000
    data = encode_command("SET VARIABLE", "X", value)
    assert len(data) <= MAX_COMMAND_BYTES
    assert len(data) > MAX_COMMAND_BYTES - 8  # uses the room it has
    sent = parse_command(data.decode("utf-8")[:-1])[3]
    assert value.startswith(sent)


def test_longest_argument_is_shortened_first() -> None:
    data = encode_command("EXEC", "a" * 900, "b" * 800)
    first, second = parse_command(data.decode()[:-1])[1:]
    assert second == "b" * 800
    assert first == "a" * (MAX_COMMAND_BYTES - len('EXEC "" ""\n') - 800)
    data = encode_command("EXEC", "a" * 3000, "b" * 3000, "c")
    words = parse_command(data.decode()[:-1])
    assert words[3] == "c"
    assert len(data) <= MAX_COMMAND_BYTES


def test_too_many_arguments_to_fit() -> None:
    with pytest.raises(ValueError, match="cannot fit"):
        encode_command("EXEC", *[""] * MAX_COMMAND_BYTES)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('STREAM FILE beep ""', ["STREAM", "FILE", "beep", ""]),
        ('SET VARIABLE MULTI "a b c"', ["SET", "VARIABLE", "MULTI", "a b c"]),
        ("  GET\tVARIABLE   X  ", ["GET", "VARIABLE", "X"]),
        (r"a\ b", ["a b"]),
        ('"ab"cd "e f"g', ["abcd", "e fg"]),
        (r'"a\"b" c\\', ['a"b', "c\\"]),
        ("x\\", ["x"]),  # a dangling backslash is dropped
        ('"unterminated quote', ["unterminated quote"]),
        ("", []),
        (" ".join(["w"] * 200), ["w"] * 127),  # Asterisk keeps MAX_ARGS - 1 words
    ],
)
def test_parse_command_like_asterisk(line: str, words: list[str]) -> None:
    assert parse_command(line) == words
    assert _scan_command(line) == words


@given(st.text(alphabet=' \t"ab=,\n', max_size=40) | st.just(" ".join(["w"] * 200)))
def test_parse_command_without_backslash_as_the_scan(line: str) -> None:
    """A line with no backslash is split by a pattern: word for word what res_agi.c's
    character scan gives."""
    assert parse_command(line) == _scan_command(line)


# --- both sides in memory ---------------------------------------------------------------------


class FakeAsterisk:
    """A few commands answered as Asterisk does, over an AsteriskConnection."""

    def __init__(self) -> None:
        self.conn = AsteriskConnection()
        self.variables = {"CALLERID(num)": "79161234567"}
        self.dead = False

    def answer(self, command: Command) -> bytes:
        match command.words:
            case ("GET", "VARIABLE", name):
                if name in self.variables:
                    return self.conn.send_reply(200, "1", self.variables[name])
                return self.conn.send_reply(200, "0")
            case ("SET", "VARIABLE", name, value):
                self.variables[name] = value
                return self.conn.send_reply(200, "1")
            case ("CHANNEL", "STATUS") if self.dead:
                return self.conn.send_reply(511)
            case ("STREAM", "FILE", _, _):
                return self.conn.send_reply(200, "0", extra={"endpos": "3404"})
            case ("GET", "VARIABLE"):
                return self.conn.send_reply(520, data="Usage: GET VARIABLE <name>")
            case _:
                return self.conn.send_reply(510)


def test_both_sides_in_memory() -> None:
    asterisk = FakeAsterisk()
    srv = ServerConnection()
    srv.receive_data(asterisk.conn.send_environment(ARGS_ENV))
    event = srv.next_event()
    assert event == Environment(ARGS_ENV)

    def call(verb: str, *args: str, hangup_first: bool = False) -> list[object]:
        asterisk.conn.receive_data(srv.send_command(verb, *args))
        command = asterisk.conn.next_event()
        assert isinstance(command, Command)
        assert asterisk.conn.next_event() is NEED_DATA
        out = b""
        if hangup_first:
            asterisk.dead = True
            out += asterisk.conn.send_hangup()
        out += asterisk.answer(command)
        events = []
        for byte in byte_by_byte(out):
            srv.receive_data(byte)
            events.extend(drain(srv))
        return events

    assert call("GET VARIABLE", "CALLERID(num)") == [
        R("200 result=1 (79161234567)", "1", "79161234567")
    ]
    value = 'he said "hi" \\ (ok) Жук'
    assert call("SET VARIABLE", "ZV_REASON", value) == [R("200 result=1", "1")]
    assert asterisk.variables["ZV_REASON"] == value
    assert call("GET VARIABLE", "ZV_REASON") == [R(f"200 result=1 ({value})", "1", value)]
    assert call("STREAM FILE", "beep", "") == [R("200 result=0 endpos=3404", "0", endpos="3404")]
    assert call("GET VARIABLE") == [
        Reply(
            520,
            lines=(
                "520-Invalid command syntax.  Proper usage follows:",
                "Usage: GET VARIABLE <name>",
                "520 End of proper usage.",
            ),
        )
    ]
    assert call("CHANNEL STATUS", hangup_first=True) == [Hangup(), R(DEAD)]
    assert call("GET VARIABLE", "NOPE") == [R("200 result=0", "0")]
    assert srv.hungup
    assert not srv.pending

    # The server closes the socket as soon as the decision is sent.
    asterisk.conn.receive_data(b"")
    assert asterisk.conn.next_event() == Closed(complete=True)
    # Asterisk closes its side too.
    srv.receive_data(b"")
    assert srv.next_event() == Closed(complete=True)


def test_asterisk_connection_cuts_long_lines_like_asterisk() -> None:
    asterisk = AsteriskConnection()
    asterisk.send_environment(BASE_ENV)
    asterisk.receive_data(b"NOOP " + b"x" * 3000 + b"\n")
    first = asterisk.next_event()
    second = asterisk.next_event()
    assert isinstance(first, Command)
    assert isinstance(second, Command)
    assert len(first.raw) == AGI_BUF_LEN - 1
    assert second.raw == "x" * (3000 + 5 - (AGI_BUF_LEN - 1))
    assert asterisk.next_event() is NEED_DATA
    # our own commands never get cut
    asterisk.receive_data(encode_command("SET VARIABLE", "X", "y" * 5000))
    command = asterisk.next_event()
    assert isinstance(command, Command)
    assert command.words[:3] == ("SET", "VARIABLE", "X")


def test_asterisk_connection_states() -> None:
    asterisk = AsteriskConnection()
    assert asterisk.send_environment({"agi_network": "yes"}) == b"agi_network: yes\n\n"
    with pytest.raises(AGIProtocolError):
        asterisk.send_environment({})
    with pytest.raises(AGIProtocolError):  # nothing to answer
        asterisk.send_reply()
    assert asterisk.send_hangup() == HANGUP_LINE == b"HANGUP\n"
    asterisk.receive_data(b"NOOP\nANSW")
    assert asterisk.next_event() == Command(("NOOP",), "NOOP")
    asterisk.receive_data(b"")
    assert asterisk.next_event() == Closed(complete=False)
    assert asterisk.next_event() == Closed(complete=False)
    assert asterisk.send_reply(200, "0") == b"200 result=0\n"


def test_need_data_repr() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"


def test_stray_empty_lines_between_replies_are_skipped() -> None:
    conn = server()
    conn.receive_data(b"\n\r\n")
    assert conn.next_event() is NEED_DATA
    conn.send_command("NOOP")
    conn.receive_data(b"\n200 result=0\n")
    assert conn.next_event() == R("200 result=0", "0")
