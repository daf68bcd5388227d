"""A fake Asterisk Manager Interface peer built from the recorded traffic of a real Asterisk.

`FakeAMI` is an asyncio server on 127.0.0.1 (port 0) that behaves as Asterisk 22 did in the
recordings in `tests/fixtures/asterisk`:

- the banner line, with no empty line after it;
- `Challenge` (MD5) and `Login` (plain or MD5); a wrong secret gets the recorded
  `Response: Error` / `Message: Authentication failed`, then the link is dropped (Asterisk
  also sleeps 1 s first: `auth_fail_delay`); actions before login get `Permission denied`;
- `Ping`, `Logoff` (then it closes), `CoreShowChannels` (an event list; this one was NOT
  recorded, its shape follows Asterisk's manager.c);
- `Originate`: REPLAYS the bytes Asterisk sent after the recorded Originate for the chosen
  case, with the ActionID rewritten to the client's, the Uniqueid/Linkedid to the client's
  `ChannelId:` (a fresh numeric id if none was sent), the channel name to a fresh one and the
  dialed channel to the client's. Timestamps and caller ID stay as recorded. Delays between
  chunks are multiplied by `time_scale` (0 = all at once).

It can misbehave on purpose: drop the link at once or right after "Originate successfully
queued", `drop()` every connection, stop answering (`silent`), stop listening for a while.
It counts what it received (`originates`, `pings`, `logins`, `connections`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Self

from transcripts import TRANSCRIPTS_DIR as TRANSCRIPTS
from zvonok_agi.ami.protocol import NEED_DATA, Action, AMIConnection, AMIProtocolError, Closed
from zvonok_agi.routing.model import Outcome

ORIGINATE_CASES = (
    "answered",
    "busy",
    "busy_with_channelid",
    "480",
    "noanswer",
    "nolistener",
    "unknown_endpoint",
)

# What each recorded case must settle to (see zvonok_agi/ami/outcome.py).
RECORDED_OUTCOMES = {
    "answered": Outcome.ANSWERED,
    "busy": Outcome.BUSY,
    "busy_with_channelid": Outcome.BUSY,
    "480": Outcome.NO_ANSWER,
    "noanswer": Outcome.NO_ANSWER,
    "nolistener": Outcome.NO_ANSWER,
    "unknown_endpoint": Outcome.FAILED,
}

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
FULLY_BOOTED = (
    b"Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 284\r\nLastReload: 284\r\n"
    b"Status: Fully Booted\r\n\r\n"
)

_HEADER = re.compile(rb"\n#### (\d\d):(\d\d):(\d\d)\.(\d{3}) (<<|>>) (\d+) bytes\n")


@dataclass(frozen=True)
class Chunk:
    """One recorded read or write: seconds since midnight, `<<` (Asterisk) or `>>`, bytes."""

    at: float
    direction: str
    data: bytes


@cache
def load_raw(name: str) -> tuple[Chunk, ...]:
    """The chunks of a `.raw` transcript (`name` like "ami_originate_busy.raw")."""
    data = (TRANSCRIPTS / name).read_bytes()
    chunks, pos = [], 0
    while pos < len(data):
        match = _HEADER.match(data, pos)
        if match is None:
            raise ValueError(f"{name}: no chunk header at byte {pos}")
        hours, minutes, seconds, millis, direction, size = match.groups()
        at = int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000
        body = data[match.end() : match.end() + int(size)]
        if len(body) != int(size):
            raise ValueError(f"{name}: chunk at byte {pos} is truncated")
        chunks.append(Chunk(at, direction.decode(), body))
        pos = match.end() + int(size)
    return tuple(chunks)


def _fields(packet: bytes) -> list[tuple[str, str]]:
    lines = packet.decode("utf-8").split("\r\n")
    return [(k, v) for k, _, v in (line.partition(": ") for line in lines if line)]


@dataclass(frozen=True)
class Recording:
    """What Asterisk sent after the Originate of one case, and the ids to rewrite in it."""

    case: str
    originate_at: float
    chunks: tuple[Chunk, ...]
    action_id: str
    channel: str  # the Channel: of the recorded Originate, e.g. PJSIP/79001234567@carrier
    uniqueid: str | None  # Uniqueid of the channel Asterisk created, if it made one
    channel_name: str | None  # e.g. PJSIP/carrier-0000000f


@cache
def recording(case: str) -> Recording:
    chunks = load_raw(f"ami_originate_{case}.raw")
    index = next(i for i, c in enumerate(chunks) if c.data.startswith(b"Action: Originate"))
    originate = dict(_fields(chunks[index].data))
    replay = []
    for chunk in chunks[index + 1 :]:
        if chunk.direction == ">>":
            break  # the client's Logoff: what follows is not part of the call
        replay.append(chunk)
    uniqueid = channel_name = None
    for chunk in replay:
        fields = dict(_fields(chunk.data))
        if fields.get("Event") == "Newchannel":
            uniqueid, channel_name = fields["Uniqueid"], fields["Channel"]
            break
    return Recording(
        case=case,
        originate_at=chunks[index].at,
        chunks=tuple(replay),
        action_id=originate["ActionID"],
        channel=originate["Channel"],
        uniqueid=uniqueid,
        channel_name=channel_name,
    )


def _dialed_number(channel: str) -> str:
    """`PJSIP/79001234567@carrier` -> `79001234567`."""
    return channel.partition("/")[2].partition("@")[0]


@dataclass
class _Session:
    writer: asyncio.StreamWriter
    authenticated: bool = False
    events_on: bool = True
    challenge: str | None = None
    replays: set[asyncio.Task[None]] = field(default_factory=set)


class FakeAMI:
    """See the module docstring. Use `async with FakeAMI(...) as fake:`; `fake.port`."""

    def __init__(
        self,
        *,
        username: str = "lab",
        secret: str = "labsecret",
        cases: Mapping[str, str] | None = None,
        default_case: str = "answered",
        time_scale: float = 0.0,
        auth_fail_delay: float = 0.0,
        drop_on_originate: bool = False,
        drop_after_originate_queued: bool = False,
        channels: Iterable[Mapping[str, str]] = (),
    ) -> None:
        for case in [default_case, *(cases or {}).values()]:
            if case not in ORIGINATE_CASES:
                raise ValueError(f"unknown originate case {case!r}")
        self.username = username
        self.secret = secret
        self.cases = dict(cases or {})  # dialed number -> case
        self.default_case = default_case
        self.time_scale = time_scale
        self.auth_fail_delay = auth_fail_delay
        self.drop_on_originate = drop_on_originate
        self.drop_after_originate_queued = drop_after_originate_queued
        self.channels = [dict(c) for c in channels]  # what CoreShowChannels lists
        self.silent = False  # read actions, answer none (a hung Asterisk)
        # An AMI user without the originate write class: Asterisk answers every Originate so.
        self.originate_not_permitted = False
        self.ignore_actions: set[str] = set()  # lower-case action names never answered

        self.port = 0
        self.connections = 0
        self.logins: list[str] = []  # "plain" / "md5" per successful login
        self.login_failures = 0
        self.pings = 0
        self.originates: list[Action] = []
        self.actions: list[Action] = []

        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], _Session] = {}
        self._replays: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(16)

    # ---- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start_listening()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start_listening(self) -> None:
        """Listen (again) on 127.0.0.1, on the same port as before if there was one."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop_listening(self) -> None:
        """Refuse new connections (connection refused) until `start_listening()`."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def drop(self) -> None:
        """Cut every open connection at once, as a crashed or restarted Asterisk would."""
        for session in self._sessions.values():
            session.writer.transport.abort()

    async def close(self) -> None:
        await self.stop_listening()
        # Cut the connections and let each handler see EOF and end by itself: cancelling
        # a stream handler task makes asyncio (3.11) log an error about it.
        self.drop()
        await asyncio.gather(*self._sessions, return_exceptions=True)

    async def wait_replays(self) -> None:
        """Wait until every Originate replay has been written out."""
        while self._replays:
            await asyncio.gather(*self._replays, return_exceptions=True)

    @property
    def originate_count(self) -> int:
        return len(self.originates)

    # ---- one connection -------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        session = _Session(writer)
        self._sessions[task] = session
        self.connections += 1
        try:
            writer.write(BANNER)
            conn = AMIConnection(expect_banner=False)
            while True:
                conn.receive_data(await reader.read(65536))
                while (event := conn.next_event()) is not NEED_DATA:
                    if isinstance(event, Closed):
                        return
                    if isinstance(event, Action) and not await self._on_action(session, event):
                        return
        except (OSError, AMIProtocolError):
            pass
        finally:
            for replay in list(session.replays):
                replay.cancel()
            await asyncio.gather(*session.replays, return_exceptions=True)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            del self._sessions[task]

    def _reply(self, session: _Session, action: Action, *lines: str) -> None:
        head = ["Response: " + lines[0]]
        if action.action_id is not None:
            head.append(f"ActionID: {action.action_id}")
        text = "\r\n".join([*head, *lines[1:]]) + "\r\n\r\n"
        session.writer.write(text.encode())

    async def _on_action(self, session: _Session, action: Action) -> bool:
        """Answer one action; False to close the connection."""
        self.actions.append(action)
        name = action.name.lower()
        if name == "originate":
            self.originates.append(action)
        if name == "ping":
            self.pings += 1
        if self.silent or name in self.ignore_actions:
            return True
        if not session.authenticated and name not in ("login", "logoff", "challenge"):
            self._reply(session, action, "Error", "Message: Permission denied")
        elif name == "challenge":
            if (action.get("AuthType") or "").lower() != "md5":
                self._reply(session, action, "Error", "Message: Must specify AuthType")
            else:
                session.challenge = str(random.randrange(10**8, 10**9))
                self._reply(session, action, "Success", f"Challenge: {session.challenge}")
        elif name == "login":
            return await self._login(session, action)
        elif name == "logoff":
            self._reply(session, action, "Goodbye", "Message: Thanks for all the fish.")
            return False
        elif name == "ping":
            self._reply(session, action, "Success", "Ping: Pong", f"Timestamp: {time.time():.6f}")
        elif name == "coreshowchannels":
            self._core_show_channels(session, action)
        elif name == "originate":
            return self._originate(session, action)
        else:
            self._reply(
                session,
                action,
                "Error",
                f"Message: Invalid/unknown command: {action.name}. "
                "Use Action: ListCommands to show available commands.",
            )
        return True

    async def _login(self, session: _Session, action: Action) -> bool:
        if (action.get("AuthType") or "").lower() == "md5":
            expected = hashlib.md5(f"{session.challenge}{self.secret}".encode()).hexdigest()
            good = session.challenge is not None and action.get("Key") == expected
            kind = "md5"
        else:
            good, kind = action.get("Secret") == self.secret, "plain"
        if action.get("Username") != self.username or not good:
            self.login_failures += 1
            await asyncio.sleep(self.auth_fail_delay)  # Asterisk sleeps 1 s here
            self._reply(session, action, "Error", "Message: Authentication failed")
            return False  # ... and drops the connection
        session.authenticated = True
        session.events_on = (action.get("Events") or "on").lower() != "off"
        self.logins.append(kind)
        self._reply(session, action, "Success", "Message: Authentication accepted")
        if session.events_on:
            session.writer.write(FULLY_BOOTED)
        return True

    def _core_show_channels(self, session: _Session, action: Action) -> None:
        self._reply(session, action, "Success", "EventList: start", "Message: Channels will follow")
        id_line = f"ActionID: {action.action_id}\r\n" if action.action_id else ""
        for channel in self.channels:
            body = "".join(f"{k}: {v}\r\n" for k, v in channel.items())
            session.writer.write(f"Event: CoreShowChannel\r\n{id_line}{body}\r\n".encode())
        session.writer.write(
            f"Event: CoreShowChannelsComplete\r\n{id_line}EventList: Complete\r\n"
            f"ListItems: {len(self.channels)}\r\n\r\n".encode()
        )

    def _originate(self, session: _Session, action: Action) -> bool:
        if self.drop_on_originate:
            session.writer.transport.abort()
            return False
        if self.originate_not_permitted:
            self._reply(session, action, "Error", "Message: Permission denied")
            return True
        channel = action.get("Channel")
        if not channel:
            self._reply(session, action, "Error", "Message: Channel not specified")
            return True
        if action.get("Exten") and not (action.get("Context") and action.get("Priority")):
            self._reply(
                session,
                action,
                "Error",
                "Message: Originate with 'Exten' requires 'Context' and 'Priority'",
            )
            return True
        case = self.cases.get(_dialed_number(channel), self.default_case)
        task = asyncio.create_task(self._replay(session, recording(case), action))
        session.replays.add(task)
        self._replays.add(task)
        task.add_done_callback(session.replays.discard)
        task.add_done_callback(self._replays.discard)
        return True

    async def _replay(self, session: _Session, rec: Recording, action: Action) -> None:
        seq = next(self._ids)
        channel = action.get("Channel") or rec.channel
        channel_id = action.get("ChannelId")
        endpoint = channel.partition("@")[2] or "carrier"
        rewrite = {
            rec.channel: channel,
            rec.channel.partition("/")[2]: channel.partition("/")[2],  # DialString
        }
        if rec.uniqueid is not None:
            rewrite[rec.uniqueid] = channel_id or f"{int(time.time())}.{seq}"
        if rec.channel_name is not None:
            rewrite[rec.channel_name] = f"PJSIP/{endpoint}-{seq:08x}"
        previous = rec.originate_at
        for chunk in rec.chunks:
            if self.time_scale:
                await asyncio.sleep(max(chunk.at - previous, 0) * self.time_scale)
            previous = chunk.at
            if chunk.data.startswith(b"Event:") and not session.events_on:
                continue
            data = self._rewrite(chunk.data, rec, rewrite, action.action_id, channel_id)
            try:
                session.writer.write(data)
                await session.writer.drain()
            except ConnectionError:
                return  # the client went away mid-call; Asterisk would carry on silently
            queued = chunk.data.startswith(b"Response:")
            if queued and self.drop_after_originate_queued:
                session.writer.close()
                return

    @staticmethod
    def _rewrite(
        packet: bytes,
        rec: Recording,
        rewrite: Mapping[str, str],
        action_id: str | None,
        channel_id: str | None,
    ) -> bytes:
        lines = []
        for key, value in _fields(packet):
            if key == "ActionID" and value == rec.action_id:
                if action_id is None:
                    continue  # Asterisk omits ActionID when the action had none
                value = action_id
            elif key == "Uniqueid" and value == "<unknown>" and channel_id:
                # manager.c reports the requested ChannelId even when no channel was made
                # (see ami_originate_busy_with_channelid: Failure, yet Uniqueid is the id).
                value = channel_id
            elif value in rewrite:
                value = rewrite[value]
            elif rec.channel_name and rec.channel_name in value:
                value = value.replace(rec.channel_name, rewrite[rec.channel_name])
            lines.append(f"{key}: {value}\r\n")
        return ("".join(lines) + "\r\n").encode()
