"""The fake AMI peer against whole recordings: played the client's side as recorded, it answers
with the bytes the real Asterisk sent (ami_coreshowchannels, ami_link_cut_during_call_conn_a/b).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from fake_ami import FakeAMI, load_raw, packets

SCALE = 0.2  # recorded seconds -> test seconds
CALLEE = "79001234567"  # the callee of both recordings
_CHANNEL = re.compile(rb"PJSIP/carrier-[0-9a-f]{8}")


@dataclass(frozen=True)
class Connection:
    recording: str
    skip: tuple[str, ...] = ()  # actions the fake does not know: not sent, replies not expected
    close_at: float | None = None  # the client closes at this recorded time (else: Logoff)


def normalised(packet: bytes) -> bytes:
    # The fake numbers channels its own way: PJSIP/carrier-0000001a is PJSIP/carrier-00000010.
    return _CHANNEL.sub(b"PJSIP/carrier-*", packet)


def recorded_replies(conn: Connection) -> list[bytes]:
    """What Asterisk sent on this connection, less the replies to the skipped actions."""
    chunks = load_raw(conn.recording)
    skipped = {
        dict(line.split(": ", 1) for line in c.data.decode().split("\r\n") if ": " in line)[
            "ActionID"
        ]
        for c in chunks
        if c.direction == ">>" and c.data.split(b"\r\n")[0].decode().split(": ")[1] in conn.skip
    }
    replies = []
    for chunk in chunks:
        if chunk.direction != "<<":
            continue
        for packet in packets(chunk.data):
            ids = re.findall(rb"\r\nActionID: ([^\r]*)\r\n", packet)
            if not (ids and ids[0].decode() in skipped):
                replies.append(normalised(packet))
    return replies


async def play(conn: Connection, port: int, start: float) -> list[bytes]:
    """Play the client's side of `conn` at the recorded times; what came back, by packet."""
    loop = asyncio.get_running_loop()
    chunks = load_raw(conn.recording)
    origin = chunks[0].at
    await asyncio.sleep(max(start + origin * SCALE - loop.time(), 0))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()

    async def read() -> None:
        while data := await reader.read(65536):
            received.extend(data)

    reading = asyncio.create_task(read())
    for chunk in chunks:
        action = chunk.data.split(b"\r\n")[0].decode().partition(": ")[2]
        if chunk.direction != ">>" or action in conn.skip:
            continue
        await asyncio.sleep(max(start + chunk.at * SCALE - loop.time(), 0))
        writer.write(chunk.data)
    if conn.close_at is not None:
        await asyncio.sleep(max(start + conn.close_at * SCALE - loop.time(), 0))
        writer.close()
    async with asyncio.timeout(10):
        await reading
    writer.close()
    return [normalised(packet) for packet in packets_of(bytes(received))]


def packets_of(data: bytes) -> list[bytes]:
    banner, _, rest = data.partition(b"\r\n")
    return [banner + b"\r\n", *packets(rest)]


async def test_core_show_channels_as_recorded() -> None:
    # Login, an empty list, an Originate that rings, a list with that call, its end, an empty
    # list again (the recording's two Status actions are not part of the fake).
    conn = Connection("ami_coreshowchannels.raw", skip=("Status",))
    async with FakeAMI(cases={CALLEE: "ringing_listed"}, time_scale=SCALE) as fake:
        start = asyncio.get_running_loop().time()
        got = await play(conn, fake.port, start)
    assert got == recorded_replies(conn)
    listed = [p for p in got if p.startswith(b"Event: CoreShowChannel\r\n")]
    assert len(listed) == 1 and b"Uniqueid: zv-rec-0001\r\n" in listed[0]
    assert b"Duration: 00:00:01\r\n" in listed[0]


async def test_link_cut_during_a_call_as_recorded() -> None:
    # The client closes its first connection 1 s after the Originate, while the call rings,
    # and logs in again: the new connection lists the call, then gets its OriginateResponse
    # (the ActionID of the action sent on the old connection) and its Hangup.
    first = Connection("ami_link_cut_during_call_conn_a.raw", close_at=1.805)
    second = Connection("ami_link_cut_during_call_conn_b.raw")
    async with FakeAMI(cases={CALLEE: "link_cut"}, time_scale=SCALE) as fake:
        start = asyncio.get_running_loop().time()
        got_a, got_b = await asyncio.gather(
            play(first, fake.port, start), play(second, fake.port, start)
        )
        assert fake.connections == 2 and fake.originate_count == 1
    assert got_a == recorded_replies(first)
    assert got_b == recorded_replies(second)
    [response] = [p for p in got_b if p.startswith(b"Event: OriginateResponse")]
    assert b"ActionID: o1\r\n" in response and b"Uniqueid: zv-cut-0001\r\n" in response


async def test_call_events_go_to_every_session_that_reads_calls() -> None:
    login = "Action: Login\r\nUsername: lab\r\nSecret: labsecret\r\nEvents: {}\r\n\r\n"
    async with FakeAMI(cases={CALLEE: "busy"}) as fake:
        sessions = []
        for events in ("call", "on", "off", "system"):
            reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
            writer.write(login.format(events).encode())
            sessions.append((reader, writer))
        await asyncio.sleep(0.1)
        sessions[0][1].write(
            f"Action: Originate\r\nActionID: x1\r\nChannel: PJSIP/{CALLEE}@carrier\r\n"
            "Context: c\r\nExten: s\r\nPriority: 1\r\nChannelId: zv-1\r\n\r\n".encode()
        )
        await fake.wait_replays()
        await asyncio.sleep(0.1)
        seen = []
        for reader, writer in sessions:
            writer.close()
            data = await reader.read()
            seen.append([p.split(b"\r\n")[0] for p in packets_of(data)[1:]])
    hangup = b"Event: Hangup"
    assert b"Response: Success" in seen[0] and hangup in seen[0]  # the one that dialed
    assert hangup in seen[1]  # another session reading every class
    assert seen[1].count(b"Response: Success") == 1  # its login's reply, not the Originate's
    assert seen[2] == [b"Response: Success"]  # events off
    assert seen[3] == [b"Response: Success", b"Event: FullyBooted"]  # the system class only


async def test_a_crash_ends_the_calls_a_cut_does_not() -> None:
    async with FakeAMI(cases={CALLEE: "noanswer"}, time_scale=1.0) as fake:
        reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
        writer.write(
            b"Action: Login\r\nUsername: lab\r\nSecret: labsecret\r\n\r\n"
            + f"Action: Originate\r\nChannel: PJSIP/{CALLEE}@carrier\r\nContext: c\r\n"
            "Exten: s\r\nPriority: 1\r\nChannelId: zv-2\r\n\r\n".encode()
        )
        async with asyncio.timeout(5):
            while not fake.calls_in_progress:
                await asyncio.sleep(0.01)
        fake.drop()
        await asyncio.sleep(0.05)
        assert fake.calls_in_progress == ["zv-2"]  # it rings on
        await fake.crash()
        assert fake.calls_in_progress == []
        writer.close()
