"""The Asterisk Manager Interface wire protocol, sans-IO (in the manner of h11).

No sockets and no asyncio here: an `AMIConnection` is fed the bytes read from the socket with
`receive_data()` (b"" means EOF) and hands out what they contain with `next_event()`:
`Banner`, `Response`, `Event`, `Action` (what a client sends; the test peer parses those),
`Closed`, or `NEED_DATA` when it needs more bytes. `encode_action()` turns an action into bytes.

Wire format (measured on Asterisk 22): the first line, `Asterisk Call Manager/11.0.0\\r\\n`, is
NOT followed by an empty line. Then every packet is `Key: Value\\r\\n` lines ended by an empty
line. Keys repeat (`Variable:`), values keep their inner and extra leading spaces, an empty
value keeps its space (`AccountCode: `). Events interleave freely with responses.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

MAX_LINE: Final = 8 * 1024
MAX_PACKET: Final = 64 * 1024


class AMIError(Exception):
    """Base of every AMI error."""


class AMIProtocolError(AMIError):
    """The peer broke the protocol (oversized line or packet, EOF inside a packet, ...)."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by `next_event()` when the buffered bytes hold no complete event."""


@dataclass(frozen=True)
class Banner:
    """The greeting line, e.g. `Asterisk Call Manager/11.0.0`."""

    text: str


@dataclass(frozen=True)
class Closed:
    """The peer closed the connection (after a complete packet)."""


@dataclass(frozen=True)
class Message:
    """One packet: its `Key: Value` lines, in order, repeated keys kept."""

    fields: tuple[tuple[str, str], ...]

    def get(self, key: str, default: str | None = None) -> str | None:
        """Value of the first `key` (compared case-insensitively, as Asterisk does)."""
        wanted = key.lower()
        for name, value in self.fields:
            if name.lower() == wanted:
                return value
        return default

    def get_all(self, key: str) -> list[str]:
        """Values of every `key`, in wire order (e.g. several `Variable:` lines)."""
        wanted = key.lower()
        return [value for name, value in self.fields if name.lower() == wanted]

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.fields)

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")


@dataclass(frozen=True)
class Response(Message):
    """The reply to an action: `Response: Success|Error|Goodbye ...`."""

    @property
    def status(self) -> str:
        return self.get("Response") or ""

    @property
    def ok(self) -> bool:
        return self.status.lower() != "error"

    @property
    def message(self) -> str | None:
        return self.get("Message")


@dataclass(frozen=True)
class Event(Message):
    """An event. Note `OriginateResponse` is an Event that also carries a `Response:` key."""

    @property
    def name(self) -> str:
        return self.get("Event") or ""


@dataclass(frozen=True)
class Action(Message):
    """An action as a client sends it (parsed by the server side, i.e. the test peer)."""

    @property
    def name(self) -> str:
        return self.get("Action") or ""


AMIEvent = Banner | Response | Event | Action | Closed


def starts_event_list(response: Response) -> bool:
    """True if this reply is followed by events carrying its ActionID (`EventList: start`)."""
    return (response.get("EventList") or "").lower() == "start"


def ends_event_list(event: Event) -> bool:
    """True if this event closes an event list (`...Complete` with `EventList: Complete`)."""
    return (event.get("EventList") or "").lower() == "complete"


def _clean(text: str) -> str:
    # CR or LF would end the line (a value could smuggle in a second action); NUL would cut
    # the line short in Asterisk's C string handling.
    return text.replace("\r", "").replace("\n", "").replace("\0", "")


def encode_action(
    name: str,
    action_id: str,
    fields: Iterable[tuple[str, str]] | Mapping[str, str] = (),
) -> bytes:
    """Bytes of one action packet. CR, LF and NUL are removed from every key and value."""
    pairs = fields.items() if isinstance(fields, Mapping) else fields
    lines = [f"Action: {_clean(name)}", f"ActionID: {_clean(action_id)}"]
    for key, value in pairs:
        key = _clean(key)
        if key.lower() in ("action", "actionid"):
            raise ValueError(f"{key!r} is set by encode_action, not by the fields")
        lines.append(f"{key}: {_clean(str(value))}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _parse_line(line: str) -> tuple[str, str]:
    key, sep, value = line.partition(":")
    if not sep:
        # Not `Key: Value`. Keep the text rather than fail the whole link over one line.
        return "", line
    # Exactly one space follows the colon; anything more belongs to the value.
    return key, value.removeprefix(" ")


def _classify(fields: tuple[tuple[str, str], ...]) -> Response | Event | Action:
    keys = {key.lower() for key, _ in fields}
    # `Event` first: OriginateResponse is an event with a `Response:` field.
    if "event" in keys:
        return Event(fields)
    if "response" in keys:
        return Response(fields)
    if "action" in keys:
        return Action(fields)
    raise AMIProtocolError(f"packet is neither an event, a response nor an action: {fields!r}")


class AMIConnection:
    """Parser of one AMI byte stream.

    Feed bytes with `receive_data()`, then call `next_event()` until it returns `NEED_DATA`
    before feeding more: the buffer then never holds more than one incomplete packet, which
    is capped (`max_packet`, `max_line`), so a hostile peer cannot make it grow without end.
    Each byte is scanned once, whatever the chunk sizes.

    `events`: the only events wanted. Any other is skipped whole, without being decoded,
    unless it carries an ActionID (it then answers an action, e.g. the items of a list).
    Asterisk sends every call event to every session reading calls, so a dialer among many
    would otherwise read all the others' calls.
    """

    def __init__(
        self,
        *,
        expect_banner: bool = True,
        max_line: int = MAX_LINE,
        max_packet: int = MAX_PACKET,
        events: Collection[str] | None = None,
    ) -> None:
        self.max_line = max_line
        self.max_packet = max_packet
        self._wanted = None if events is None else frozenset(e.encode() for e in events)
        self._need_banner = expect_banner
        self._buf = bytearray()
        self._pos = 0  # start of the unread part of _buf
        self._scanned = 0  # bytes after _pos already known to hold no newline
        self._lines: list[bytes] = []  # raw lines of the packet being read
        self._packet_size = 0
        self._eof = False
        self._error: AMIProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the peer; b"" means the peer closed the connection."""
        if self._eof:
            raise RuntimeError("receive_data() after EOF")
        if not data:
            self._eof = True
            return
        if self._pos:
            # Compact here, not per line: deleting a prefix per line would be quadratic.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_event(self) -> AMIEvent | _NeedData:
        """The next complete event, or `NEED_DATA`. Raises `AMIProtocolError` for good."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except AMIProtocolError as exc:
            self._error = exc
            raise

    def _next_event(self) -> AMIEvent | _NeedData:
        while True:
            if self._wanted is not None and not self._lines and not self._need_banner:
                skipped = self._skip_unwanted()
                if skipped is None:
                    return NEED_DATA
                if skipped:
                    continue
            line = self._read_line()
            if line is None:
                return self._at_end_of_buffer()
            if self._need_banner:
                self._need_banner = False
                return Banner(line.decode("utf-8", "replace"))
            if line:
                self._packet_size += len(line) + 2
                if self._packet_size > self.max_packet:
                    raise AMIProtocolError(f"packet longer than {self.max_packet} bytes")
                self._lines.append(line)
            elif self._lines:
                return self._finish_packet()
            # else: a stray empty line between packets, nothing to report

    def _skip_unwanted(self) -> bool | None:
        """At a packet's start: True if it was an unwanted event, now dropped; False if it
        is to be read; None if more bytes are needed to tell."""
        buf, pos = self._buf, self._pos
        if not buf.startswith(b"Event: ", pos):
            return False if len(buf) - pos >= 7 or self._eof else None
        name_end = buf.find(b"\n", pos)
        if name_end < 0:
            return False if self._eof or len(buf) - pos > self.max_line else None
        if bytes(buf[pos + 7 : name_end]).rstrip(b"\r") in self._wanted:
            return False
        # The packet ends at its first empty line, as _read_line reads it ("\n\n", "\n\r\n").
        ends = [i for i in (buf.find(b"\n\n", name_end), buf.find(b"\n\r\n", name_end)) if i >= 0]
        if not ends:
            return False if self._eof or len(buf) - pos > self.max_packet else None
        end = min(ends)
        end += 2 if buf[end + 1] == 10 else 3  # past "\n\n" or "\n\r\n"
        if buf.find(b"\nActionID:", pos, end) >= 0:
            return False  # it answers an action
        self._pos = end
        self._scanned = 0
        return True

    def _read_line(self) -> bytes | None:
        """One line without its terminator (CRLF, or a bare LF), or None if incomplete."""
        end = self._buf.find(b"\n", self._pos + self._scanned)
        if end < 0:
            self._scanned = len(self._buf) - self._pos
            if self._scanned > self.max_line:
                raise AMIProtocolError(f"line longer than {self.max_line} bytes")
            return None
        line = bytes(self._buf[self._pos : end])
        self._pos = end + 1
        self._scanned = 0
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line:
            raise AMIProtocolError(f"line longer than {self.max_line} bytes")
        return line

    def _at_end_of_buffer(self) -> Closed | _NeedData:
        partial = len(self._buf) - self._pos
        if self._packet_size + partial > self.max_packet:
            raise AMIProtocolError(f"packet longer than {self.max_packet} bytes")
        if not self._eof:
            return NEED_DATA
        if self._lines or partial:
            raise AMIProtocolError("connection closed in the middle of a packet")
        return Closed()

    def _finish_packet(self) -> Response | Event | Action:
        # Decode the whole packet at once: a multi-byte character split across TCP chunks
        # (Cyrillic caller names) must come out whole; bad bytes become U+FFFD.
        text = b"\n".join(self._lines).decode("utf-8", "replace")
        self._lines = []
        self._packet_size = 0
        return _classify(tuple(_parse_line(line) for line in text.split("\n")))
