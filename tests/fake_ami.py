"""A fake Asterisk Manager Interface peer built from the recorded traffic of a real Asterisk.

`FakeAMI` is an asyncio server on 127.0.0.1 (port 0) that behaves as Asterisk 22 did in the
recordings in `tests/fixtures/asterisk`:

- the banner line, with no empty line after it;
- `Challenge` (MD5) and `Login` (plain or MD5); a wrong secret gets the recorded
  `Response: Error` / `Message: Authentication failed`, then the link is dropped (Asterisk
  also sleeps 1 s first: `auth_fail_delay`); actions before login get `Permission denied`;
  `Events:` of the login sets the classes of events the session gets (`call`, `on`, `off`);
- `Ping`, `Logoff` (then it closes);
- `Originate`: REPLAYS what Asterisk sent after the recorded Originate for the chosen case,
  with the ActionID rewritten to the client's, the Uniqueid/Linkedid to the client's
  `ChannelId:` (a fresh numeric id if none was sent), the channel name to a fresh one and the
  dialed channel to the client's. Timestamps and caller ID stay as recorded. Delays between
  chunks are multiplied by `time_scale` (0 = all at once). The reply goes to the session that
  sent the Originate; the call's events go to EVERY session logged in for class `call`,
  whichever sent it, and the call goes on when that session is gone
  (ami_link_cut_during_call_conn_a/b);
- `CoreShowChannels`: the calls in progress (from their Newchannel to their Hangup), each as
  the recorded `CoreShowChannel` event with the call's channel, state, ids and duration
  (ami_coreshowchannels).

It can misbehave on purpose: drop the link at once or right after "Originate successfully
queued", `drop()` every connection (the calls go on), `crash()` (the calls end with it), stop
answering (`silent`), stop listening for a while.
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
from dataclasses import dataclass
from functools import cache
from typing import Self

from transcripts import TRANSCRIPTS_DIR as TRANSCRIPTS
from zvonok_agi.ami.protocol import NEED_DATA, Action, AMIConnection, AMIProtocolError, Closed
from zvonok_agi.routing.model import Outcome

# Each case: the recordings that hold its call, in time order (one clock across them).
CASE_RECORDINGS = {
    "answered": ("ami_originate_answered.raw",),
    "busy": ("ami_originate_busy.raw",),
    "busy_with_channelid": ("ami_originate_busy_with_channelid.raw",),
    "480": ("ami_originate_480.raw",),
    "noanswer": ("ami_originate_noanswer.raw",),
    "nolistener": ("ami_originate_nolistener.raw",),
    "unknown_endpoint": ("ami_originate_unknown_endpoint.raw",),
    # Rings for 6 s, listed by CoreShowChannels meanwhile; its Hangup comes before its
    # OriginateResponse.
    "ringing_listed": ("ami_coreshowchannels.raw",),
    # Rings for 5 s; the client's link was cut and a new one made meanwhile, which got the
    # OriginateResponse (first) and the Hangup.
    "link_cut": ("ami_link_cut_during_call_conn_a.raw", "ami_link_cut_during_call_conn_b.raw"),
}
ORIGINATE_CASES = tuple(CASE_RECORDINGS)

# What each recorded case must settle to (see zvonok_agi/ami/outcome.py).
RECORDED_OUTCOMES = {
    "answered": Outcome.ANSWERED,
    "busy": Outcome.BUSY,
    "busy_with_channelid": Outcome.BUSY,
    "480": Outcome.NO_ANSWER,
    "noanswer": Outcome.NO_ANSWER,
    "nolistener": Outcome.NO_ANSWER,
    "unknown_endpoint": Outcome.FAILED,
    "ringing_listed": Outcome.NO_ANSWER,
    "link_cut": Outcome.NO_ANSWER,
}

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
FULLY_BOOTED = (
    b"Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 284\r\nLastReload: 284\r\n"
    b"Status: Fully Booted\r\n\r\n"
)
# What a CoreShowChannel event carries, as recorded (the call's own values replace these).
CHANNEL_LISTING = "ami_link_cut_during_call_conn_b.raw"
# The fields of a call's channel events that CoreShowChannel repeats.
CHANNEL_FIELDS = (
    "Channel",
    "ChannelState",
    "ChannelStateDesc",
    "CallerIDNum",
    "CallerIDName",
    "ConnectedLineNum",
    "ConnectedLineName",
    "Language",
    "AccountCode",
    "Context",
    "Exten",
    "Priority",
    "Uniqueid",
    "Linkedid",
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


def packets(data: bytes) -> list[bytes]:
    """The packets of a chunk, each with its closing empty line (the banner is one too)."""
    if data.startswith(b"Asterisk Call Manager/"):
        return [data]
    return [part + b"\r\n\r\n" for part in data.split(b"\r\n\r\n") if part]


def fields_of(packet: bytes) -> list[tuple[str, str]]:
    lines = packet.decode("utf-8").split("\r\n")
    return [(k, v) for k, _, v in (line.partition(": ") for line in lines if line)]


def encode(fields: Iterable[tuple[str, str]]) -> bytes:
    return ("".join(f"{key}: {value}\r\n" for key, value in fields) + "\r\n").encode()


@dataclass(frozen=True)
class Recording:
    """What Asterisk sent about the call of one case, and the ids to rewrite in it."""

    case: str
    originate_at: float
    chunks: tuple[Chunk, ...]  # only the Originate's reply and the call's events
    action_id: str
    channel: str  # the Channel: of the recorded Originate, e.g. PJSIP/79001234567@carrier
    uniqueid: str | None  # Uniqueid of the channel Asterisk created, if it made one
    channel_name: str | None  # e.g. PJSIP/carrier-0000000f


@cache
def recording(case: str) -> Recording:
    first, *others = CASE_RECORDINGS[case]
    chunks = load_raw(first)
    index = next(i for i, c in enumerate(chunks) if c.data.startswith(b"Action: Originate"))
    originate = dict(fields_of(chunks[index].data))
    action_id = originate["ActionID"]
    replay = []
    for source in (chunks[index + 1 :], *(load_raw(name) for name in others)):
        for chunk in source:
            if chunk.data.startswith(b"Action: Logoff"):
                break  # what follows is not part of the call
            if chunk.direction == ">>":
                continue  # the client's other actions, whose replies are dropped below
            # The Originate's reply and the call's events; not the replies to other actions.
            kept = [
                packet
                for packet in packets(chunk.data)
                if not packet.startswith(b"Asterisk Call Manager/")
                and dict(fields_of(packet)).get("ActionID", action_id) == action_id
            ]
            if kept:
                replay.append(Chunk(chunk.at, chunk.direction, b"".join(kept)))
    uniqueid = channel_name = None
    for chunk in replay:
        for packet in packets(chunk.data):
            fields = dict(fields_of(packet))
            if fields.get("Event") == "Newchannel" and uniqueid is None:
                uniqueid, channel_name = fields["Uniqueid"], fields["Channel"]
    return Recording(
        case=case,
        originate_at=chunks[index].at,
        chunks=tuple(replay),
        action_id=action_id,
        channel=originate["Channel"],
        uniqueid=uniqueid,
        channel_name=channel_name,
    )


@cache
def channel_listing_template() -> tuple[tuple[str, str], ...]:
    """The fields of the recorded CoreShowChannel event."""
    for chunk in load_raw(CHANNEL_LISTING):
        for packet in packets(chunk.data):
            if packet.startswith(b"Event: CoreShowChannel\r\n"):
                return tuple(fields_of(packet))
    raise ValueError(f"{CHANNEL_LISTING} holds no CoreShowChannel event")


def _dialed_number(channel: str) -> str:
    """`PJSIP/79001234567@carrier` -> `79001234567`."""
    return channel.partition("/")[2].partition("@")[0]


def _classes(value: str | None) -> frozenset[str] | None:
    """The event classes a login's `Events:` asks for; None for all of them."""
    text = (value or "on").strip().lower()
    if text in ("on", "yes", "all", "true"):
        return None
    if text in ("off", "no", "false"):
        return frozenset()
    return frozenset(part.strip() for part in text.split(",") if part.strip())


@dataclass
class _Session:
    writer: asyncio.StreamWriter
    authenticated: bool = False
    classes: frozenset[str] | None = None  # event classes it gets; None: all
    challenge: str | None = None

    def wants(self, privilege: str) -> bool:
        if not self.authenticated or self.writer.is_closing():
            return False
        if self.classes is None:
            return True
        return bool(self.classes & {part.strip() for part in privilege.split(",")})


@dataclass
class _Channel:
    """A call's channel while it exists: what CoreShowChannels lists."""

    fields: dict[str, str]
    since: float  # recorded time of its Newchannel
    clock: tuple[float, float]  # (recorded time, loop time) of the replay's last chunk


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
        # Listed by CoreShowChannels after the calls in progress: fields over the recorded ones.
        self.channels = [dict(c) for c in channels]
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
        self._live: dict[str, _Channel] = {}  # Uniqueid -> the channel of a call in progress
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
        """Cut every open connection at once (a network failure): the calls go on."""
        for session in self._sessions.values():
            session.writer.transport.abort()

    async def crash(self) -> None:
        """Cut every connection and end every call, as an Asterisk that died would."""
        self.drop()
        await self._end_calls()

    async def close(self) -> None:
        await self.stop_listening()
        # Cut the connections and let each handler see EOF and end by itself: cancelling
        # a stream handler task makes asyncio (3.11) log an error about it.
        await self.crash()
        await asyncio.gather(*self._sessions, return_exceptions=True)

    async def _end_calls(self) -> None:
        replays = list(self._replays)
        for replay in replays:
            replay.cancel()
        await asyncio.gather(*replays, return_exceptions=True)
        self._live.clear()

    async def wait_replays(self) -> None:
        """Wait until every Originate replay has been written out."""
        while self._replays:
            await asyncio.gather(*self._replays, return_exceptions=True)

    @property
    def originate_count(self) -> int:
        return len(self.originates)

    @property
    def calls_in_progress(self) -> list[str]:
        """The Uniqueids CoreShowChannels would list now (static `channels` aside)."""
        return list(self._live)

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
        session.classes = _classes(action.get("Events"))
        self.logins.append(kind)
        self._reply(session, action, "Success", "Message: Authentication accepted")
        if session.wants("system,all"):
            session.writer.write(FULLY_BOOTED)
        return True

    def _core_show_channels(self, session: _Session, action: Action) -> None:
        self._reply(session, action, "Success", "EventList: start", "Message: Channels will follow")
        listed = [self._listing(channel) for channel in self._live.values()] + self.channels
        id_field = [("ActionID", action.action_id)] if action.action_id else []
        template = [(k, v) for k, v in channel_listing_template() if k not in ("Event", "ActionID")]
        out = []
        for values in listed:
            event = [("Event", "CoreShowChannel"), *id_field]
            out.append(encode(event + [(k, values.get(k, v)) for k, v in template]))
        done = [("Event", "CoreShowChannelsComplete"), *id_field, ("EventList", "Complete")]
        out.append(encode([*done, ("ListItems", str(len(listed)))]))
        session.writer.write(b"".join(out))

    def _listing(self, channel: _Channel) -> dict[str, str]:
        recorded_now, at = channel.clock
        if self.time_scale:
            recorded_now += (asyncio.get_running_loop().time() - at) / self.time_scale
        seconds = max(int(recorded_now - channel.since), 0)
        duration = f"{seconds // 3600:02}:{seconds // 60 % 60:02}:{seconds % 60:02}"
        return {**channel.fields, "Duration": duration}

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
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)
        return True

    async def _replay(self, origin: _Session, rec: Recording, action: Action) -> None:
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
        loop = asyncio.get_running_loop()
        previous = rec.originate_at
        uniqueid = None
        try:
            for chunk in rec.chunks:
                if self.time_scale:
                    await asyncio.sleep(max(chunk.at - previous, 0) * self.time_scale)
                previous = chunk.at
                events: list[tuple[str, bytes]] = []
                for packet in packets(chunk.data):
                    fields = self._rewrite(packet, rec, rewrite, action.action_id, channel_id)
                    if fields[0][0] == "Response":
                        if not origin.writer.is_closing():
                            origin.writer.write(encode(fields))
                        if self.drop_after_originate_queued:
                            origin.writer.close()
                        continue
                    uniqueid = self._follow(fields, (chunk.at, loop.time())) or uniqueid
                    events.append((dict(fields).get("Privilege", ""), encode(fields)))
                self._broadcast(events)
        finally:
            if uniqueid is not None:
                self._live.pop(uniqueid, None)  # the call ends with its replay

    def _follow(self, fields: list[tuple[str, str]], clock: tuple[float, float]) -> str | None:
        """Keep the channel list in step with a call's event; the call's Uniqueid, if any."""
        values = dict(fields)
        uniqueid = values.get("Uniqueid")
        if uniqueid is None or "ChannelState" not in values:
            return None  # not a channel's event (an OriginateResponse, a DialBegin)
        if values.get("Event") == "Hangup":
            self._live.pop(uniqueid, None)
            return uniqueid
        channel = self._live.get(uniqueid)
        if channel is None:
            if values.get("Event") != "Newchannel":
                return uniqueid
            channel = self._live[uniqueid] = _Channel({}, clock[0], clock)
        channel.fields.update((k, values[k]) for k in CHANNEL_FIELDS if k in values)
        if values.get("Event") == "Newexten":  # the dialplan application it runs now
            channel.fields["Application"] = values.get("Application", "")
            channel.fields["ApplicationData"] = values.get("AppData", "")
        channel.clock = clock
        return uniqueid

    def _broadcast(self, events: list[tuple[str, bytes]]) -> None:
        """Every event to every session logged in for its class, as Asterisk does."""
        for session in self._sessions.values():
            data = b"".join(packet for privilege, packet in events if session.wants(privilege))
            if data:
                session.writer.write(data)

    @staticmethod
    def _rewrite(
        packet: bytes,
        rec: Recording,
        rewrite: Mapping[str, str],
        action_id: str | None,
        channel_id: str | None,
    ) -> list[tuple[str, str]]:
        fields = []
        for key, value in fields_of(packet):
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
            fields.append((key, value))
        return fields
