"""The fake channel (`zvonok-agi agi-call`, the engine tests) answers as the recorded Asterisk.

Every command our side sent in a recorded session is put to a FakeChannel that starts with the
channel's recorded state; its reply must be the recorded bytes. Commands the fake does not play
(CHANNEL STATUS and the media commands) are listed, so that a new one cannot slip by.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transcripts import FROM_ASTERISK, FROM_SERVER, TRANSCRIPTS_DIR, read_sessions
from zvonok_agi.agi.client import FakeChannel, _scan_args, separate_args
from zvonok_agi.agi.protocol import (
    HANGUP_LINE,
    NEED_DATA,
    AsteriskConnection,
    Command,
    Environment,
    ServerConnection,
)

NOT_PLAYED = {"CHANNEL STATUS"}

SESSIONS = [
    ("agi_env_and_commands.txt", "conn 1"),
    ("agi_mset.txt", "s1"),
    ("agi_mset.txt", "s2"),
]


def recorded_exchanges(name: str, session: str) -> tuple[Environment, list[tuple[bytes, bytes]]]:
    """The env block and each (command, reply) of one recorded session."""
    env_block = b""
    exchanges: list[tuple[bytes, bytes]] = []
    for direction, data in read_sessions(TRANSCRIPTS_DIR / name)[session]:
        if direction == FROM_SERVER and data:
            exchanges.append((data, b""))
        elif direction == FROM_ASTERISK and not exchanges:
            env_block += data
        elif direction == FROM_ASTERISK and data != HANGUP_LINE:
            command, reply = exchanges[-1]
            exchanges[-1] = (command, reply + data)
    server = ServerConnection()
    server.receive_data(env_block)
    env = server.next_event()
    assert isinstance(env, Environment)
    return env, exchanges


@pytest.mark.parametrize(("name", "session"), SESSIONS)
def test_fake_channel_replies_as_recorded(name: str, session: str) -> None:
    env, exchanges = recorded_exchanges(name, session)
    channel = FakeChannel(
        variables={"CALLERID(num)": env.get("agi_callerid")},
        builtins={
            "CHANNEL": env.get("agi_channel"),
            "CALLERID(all)": f'"{env.get("agi_calleridname")}" <{env.get("agi_callerid")}>',
        },
    )
    conn = AsteriskConnection()
    played = 0
    for command_bytes, recorded_reply in exchanges:
        conn.receive_data(command_bytes)
        command = conn.next_event()
        assert isinstance(command, Command)
        assert conn.next_event() is NEED_DATA
        reply = channel.answer(conn, command)
        if " ".join(command.words[:2]).upper() in NOT_PLAYED:
            continue
        assert reply == recorded_reply, command.raw
        played += 1
    assert played >= 2


@pytest.mark.parametrize(
    ("line", "variables"),
    [
        (b"SET VARIABLE X\n", {}),  # res_agi.c sets nothing without a value, and says 1
        (b"SET VARIABLE X a b\n", {"X": "a"}),  # the 4th word; the rest is ignored
        (b'SET VARIABLE X ""\n', {"X": ""}),
    ],
)
def test_set_variable_of_odd_length_as_res_agi_does(line: bytes, variables: dict) -> None:
    channel, conn = FakeChannel(), AsteriskConnection()
    conn.receive_data(line)
    command = conn.next_event()
    assert isinstance(command, Command)
    assert channel.answer(conn, command) == b"200 result=1\n"
    assert channel.variables == variables


@given(
    st.text(alphabet="ab=,|( )[]\"\\", max_size=30),
    st.sampled_from([",", "=", "|", "?"]),
    st.booleans(),
    st.integers(1, 5),
)
def test_separate_args_as_app_c_scans(data: str, delim: str, remove_chars: bool, limit: int):
    """The plain split taken when nothing nests, quotes or escapes gives what app.c's
    character scan gives, and so does every other string."""
    assert separate_args(data, delim, remove_chars=remove_chars, limit=limit) == _scan_args(
        data, delim, remove_chars=remove_chars, limit=limit
    )
