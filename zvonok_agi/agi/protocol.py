"""Sans-IO FastAGI protocol (both sides), in the style of h11.

No sockets and no asyncio here: a connection object is fed the bytes that arrived
(`receive_data`, `b""` for EOF), hands out events (`next_event`) and turns commands into the
bytes to write (`send_command`). The server's session is:

    Environment, then (command -> [Hangup...] Reply)*, and Closed when Asterisk hangs up on us.

with one named state per phase (`ServerState`): ENV until the whole env block is here (Asterisk
writes it at once; it is parsed in one go, however the bytes were cut), then IDLE and
AWAITING_REPLY (IN_BLOCK inside a multi-line `520` reply) in turn.

`Hangup` may arrive at any time after the env block, even between a command and its reply:
it is reported and remembered, and the reply is still awaited. Everything Asterisk sends is
treated as untrusted: lines, env blocks and multi-line replies are bounded, env keys are
whitelisted and values capped.

`AsteriskConnection` plays Asterisk's side exactly as the recorded transcripts show, for the
smoke-test client and the benchmark load generator.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, NoReturn
from urllib.parse import parse_qsl

__all__ = [
    "AGI_BUF_LEN",
    "HANGUP_LINE",
    "KNOWN_ENV_KEYS",
    "MAX_COMMAND_BYTES",
    "MAX_ENV_ARGS",
    "MAX_ENV_BYTES",
    "MAX_ENV_LINES",
    "MAX_ENV_VALUE",
    "MAX_LINE",
    "MAX_REPLY_LINES",
    "NEED_DATA",
    "AGIProtocolError",
    "AsteriskConnection",
    "Closed",
    "Command",
    "Environment",
    "Hangup",
    "Reply",
    "ServerConnection",
    "ServerState",
    "encode_command",
    "encode_environment",
    "encode_reply",
    "parse_command",
]

MAX_LINE = 8192  # a received line longer than this (line ending excluded) is a protocol error
MAX_ENV_VALUE = 256  # env values are capped to this many characters
MAX_ENV_LINES = 200  # Asterisk sends ~22 lines plus agi_arg_N
MAX_ENV_BYTES = 65536  # the whole env block; Asterisk's is ~600 bytes
MAX_ENV_ARGS = 64  # agi_arg_1 .. agi_arg_64 are kept
MAX_REPLY_LINES = 200  # lines in one multi-line (520-) reply; Asterisk's usage texts are short
# Every command line we send, "\n" included: room for the largest MSet (a campaign's scenario
# with eight operators), a margin below Asterisk's buffer.
MAX_COMMAND_BYTES = 1536
AGI_BUF_LEN = 2048  # Asterisk's command buffer: it cuts longer lines (see AsteriskConnection)
HANGUP_LINE = b"HANGUP\n"

_AST_MAX_ARGS = 128  # res_agi.c MAX_ARGS: parse_args keeps at most MAX_ARGS - 1 words

KNOWN_ENV_KEYS: frozenset[str] = frozenset(
    {
        "agi_network",
        "agi_network_script",
        "agi_request",
        "agi_channel",
        "agi_language",
        "agi_type",
        "agi_uniqueid",
        "agi_version",
        "agi_callerid",
        "agi_calleridname",
        "agi_callingpres",
        "agi_callingani2",
        "agi_callington",
        "agi_callingtns",
        "agi_dnid",
        "agi_rdnis",
        "agi_context",
        "agi_extension",
        "agi_priority",
        "agi_enhanced",
        "agi_accountcode",
        "agi_threadid",
    }
    | {f"agi_arg_{n}" for n in range(1, MAX_ENV_ARGS + 1)}
)


class AGIProtocolError(Exception):
    """The peer broke the protocol, or a call came in the wrong state."""


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


NEED_DATA = NeedData.NEED_DATA


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    """The env block: known `agi_*` keys only, first occurrence kept, values capped.

    `tampered`: a line without ':' or a known key twice. Asterisk writes each value raw, so a
    caller ID holding a line break writes lines of its own (`agi_extension: ...`); no value of
    such a block can be trusted to be what it says.
    """

    variables: Mapping[str, str]
    tampered: bool = False

    def get(self, key: str, default: str = "") -> str:
        return self.variables.get(key, default)

    @property
    def script(self) -> str:
        """`agi_network_script` without its query string and leading '/': `route`."""
        return self.get("agi_network_script").partition("?")[0].lstrip("/")

    @property
    def query(self) -> Mapping[str, str]:
        """The query string of `agi_network_script`, first value of each key."""
        params: dict[str, str] = {}
        for key, value in parse_qsl(
            self.get("agi_network_script").partition("?")[2], keep_blank_values=True
        ):
            params.setdefault(key, value)
        return MappingProxyType(params)

    @property
    def args(self) -> tuple[str, ...]:
        """`agi_arg_1..N` in order, up to the first missing index; empty args kept."""
        args = []
        for n in range(1, MAX_ENV_ARGS + 1):
            value = self.variables.get(f"agi_arg_{n}")
            if value is None:
                break
            args.append(value)
        return tuple(args)


@dataclass(frozen=True)
class Reply:
    """A reply to a command: `200 result=1 (data) endpos=3404`, `510 ...`, a `520-` block."""

    code: int
    result: str | None = None
    data: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    lines: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code == 200


@dataclass(frozen=True)
class Hangup:
    """The unsolicited `HANGUP` line: the channel hung up (the session goes on)."""


@dataclass(frozen=True)
class Closed:
    """EOF. `complete` is False when it cut something off: the env block, a line, a 520 block."""

    complete: bool = True


@dataclass(frozen=True)
class Command:
    """A command line as Asterisk reads it (AsteriskConnection's event)."""

    words: tuple[str, ...]
    raw: str


ServerEvent = Environment | Reply | Hangup | Closed
AsteriskEvent = Command | Closed


# --- encoding and parsing ---------------------------------------------------------------------

_VERB = re.compile(r"[A-Z]+(?: [A-Z]+)*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_STATUS = re.compile(r"([0-9]{3})(?:([ -])|\Z)")

# Asterisk's own texts for the non-200 replies (see the transcripts).
_STATUS_TEXT = {
    510: "Invalid or unknown command",
    511: "Command Not Permitted on a dead channel or intercept routine",
    520: "Invalid command syntax.  Proper usage not available.",
}


def _clean_arg(arg: str) -> str:
    if not isinstance(arg, str):
        raise TypeError(f"AGI arguments are str, not {type(arg).__name__}")
    # A control character (above all "\n") would end the line or split the command.
    arg = _CONTROL.sub("", arg)
    # Lone surrogates (from surrogateescape) cannot be sent as UTF-8: they become '?'.
    return arg.encode("utf-8", "replace").decode("utf-8")


def _escaped_size(text: str) -> int:
    """Bytes of `text` inside the quotes: UTF-8 plus one backslash per `\\` and `"`."""
    return len(text.encode("utf-8")) + text.count("\\") + text.count('"')


def _cut_to(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` whose escaped size is at most `max_bytes`."""
    # Cutting characters of the unescaped text, before escaping, can never split a UTF-8
    # sequence or leave a lone backslash. Each character takes at least one byte.
    size = 0
    for i, char in enumerate(text[: max_bytes + 1]):
        size += len(char.encode("utf-8")) + (char in '\\"')
        if size > max_bytes:
            return text[:i]
    return text


def encode_command(verb: str, *args: str) -> bytes:
    """One command line: `SET VARIABLE "name" "value"\\n`, at most MAX_COMMAND_BYTES.

    Every argument is quoted and escaped as Asterisk's parse_args reads it, control characters
    are dropped, and if the line is too long the longest argument is shortened (repeatedly).
    Argument content never raises; a bad verb, or more empty arguments than fit, does.
    """
    if not _VERB.fullmatch(verb):
        raise ValueError(f"AGI verb must be upper-case words: {verb!r}")
    plain = _plain_command(verb, args)
    if plain is not None:
        return plain
    cleaned = [_clean_arg(arg) for arg in args]
    sizes = [_escaped_size(arg) + 2 for arg in cleaned]  # + the two quotes
    # verb, one space before each argument, the arguments, "\n"
    excess = len(verb) + len(cleaned) + sum(sizes) + 1 - MAX_COMMAND_BYTES
    while excess > 0:
        if not sizes or max(sizes) == 2:
            raise ValueError(f"{verb} with {len(args)} arguments cannot fit one command line")
        i = sizes.index(max(sizes))
        cleaned[i] = _cut_to(cleaned[i], max(0, sizes[i] - 2 - excess))
        new_size = _escaped_size(cleaned[i]) + 2
        excess -= sizes[i] - new_size
        sizes[i] = new_size
    quoted = "".join(' "' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"' for arg in cleaned)
    return f"{verb}{quoted}\n".encode()


def _plain_command(verb: str, args: tuple[str, ...]) -> bytes | None:
    """The line at once when every argument is printable ASCII and it fits (every route's
    command): nothing to drop, cut or encode specially. Else None."""
    for arg in args:
        if not (isinstance(arg, str) and arg.isascii() and arg.isprintable()):
            return None
    quoted = "".join(' "' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"' for arg in args)
    line = f"{verb}{quoted}\n"
    return line.encode() if len(line) <= MAX_COMMAND_BYTES else None


def parse_command(line: str) -> list[str]:
    """Split a command line into words exactly as Asterisk's res_agi.c parse_args does.

    Space and tab separate words, `"` toggles quoting (an opening quote after whitespace starts
    a word, so `""` is an empty word), a backslash makes the next character literal.
    """
    if "\\" in line:
        return _scan_command(line)
    # With no backslash a word is a run of quoted stretches and unquoted characters.
    return [word.replace('"', "") for word in _WORD.findall(line)][: _AST_MAX_ARGS - 1]


_WORD = re.compile(r'(?:"[^"]*(?:"|\Z)|[^ \t"])+')


def _scan_command(line: str) -> list[str]:
    """parse_command character by character, as res_agi.c does."""
    words: list[list[str]] = []
    quoted = escaped = False
    whitespace = True  # between words
    for char in line:
        if char == '"' and not escaped:
            quoted = not quoted
            if quoted and whitespace:  # an opening quote after whitespace starts a word
                if len(words) >= _AST_MAX_ARGS - 1:
                    break  # Asterisk drops the words past its limit
                words.append([])
                whitespace = False
            continue
        if char in " \t" and not quoted and not escaped:
            whitespace = True
            continue
        if char == "\\" and not escaped:
            escaped = True
            continue
        if whitespace:
            if len(words) >= _AST_MAX_ARGS - 1:
                break
            words.append([])
            whitespace = False
        words[-1].append(char)
        escaped = False
    return ["".join(word) for word in words]


def encode_environment(variables: Mapping[str, str]) -> bytes:
    """The env block as Asterisk sends it: `key: value\\n` lines, then an empty line."""
    return "".join(f"{key}: {value}\n" for key, value in variables.items()).encode() + b"\n"


def encode_reply(
    code: int = 200,
    result: str = "1",
    data: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> bytes:
    """A reply as Asterisk writes it: `200 result=1 (data) endpos=3404\\n`.

    For other codes, `data` is the text after the code (default: Asterisk's own text); a 520
    with `data` is the multi-line block with `data` as the usage text.
    """
    if code == 200:
        line = f"200 result={result}"
        if data is not None:
            line += f" ({data})"
        for key, value in (extra or {}).items():
            line += f" {key}={value}"
        return f"{line}\n".encode()
    if code == 520 and data is not None:
        return (
            f"520-Invalid command syntax.  Proper usage follows:\n{data}\n"
            "520 End of proper usage.\n"
        ).encode()
    text = data if data is not None else _STATUS_TEXT.get(code, "")
    return f"{code} {text}\n".encode()


def _parse_reply(line: str) -> Reply:
    """One reply line. The data runs from the first `(` to the LAST `)` (it may hold `)`)."""
    code = int(line[:3])
    rest = line[4:]
    result = data = None
    extra: dict[str, str] = {}
    if rest.startswith("result="):
        result, _, rest = rest[len("result=") :].partition(" ")
        if rest.startswith("("):
            close = rest.rfind(")")
            if close == -1:
                data, rest = rest[1:], ""
            else:
                data, rest = rest[1:close], rest[close + 1 :]
        for token in rest.split():
            key, eq, value = token.partition("=")
            if eq and key:
                extra.setdefault(key, value)
    return Reply(code, result, data, MappingProxyType(extra), (line,))


# --- connections ------------------------------------------------------------------------------


class _LineBuffer:
    """Received bytes, handed out line by line (or, for the env block, through its empty line)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the unread part; compacted on the next feed
        self._scanned = 0  # how far `pop_block` has looked for the empty line
        self.newlines = 0  # "\n" seen by `pop_block` in the unread part
        self.tail = 0  # bytes after the last "\n" received
        self.eof = False

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._scanned = max(0, self._scanned - self._pos)
            self._pos = 0
        self._buf += data
        newline = data.rfind(b"\n")
        self.tail = self.tail + len(data) if newline == -1 else len(data) - newline - 1

    def pop(self, window: int) -> bytes | None:
        """The next line with its "\\n"; else the first `window` bytes if that many are here
        without a "\\n"; else None."""
        newline = self._buf.find(b"\n", self._pos, self._pos + window)
        if newline != -1:
            end = newline + 1
        elif len(self._buf) - self._pos >= window:
            end = self._pos + window
        else:
            return None
        return self._take(end)

    def pop_block(self) -> bytes | None:
        """Everything through the first empty line ("\\n" or "\\r\\n" alone) when it is here;
        else None. Each byte is looked at once however the data was cut."""
        buf, start = self._buf, self._pos
        if buf.startswith(b"\n", start):
            return self._take(start + 1)
        if buf.startswith(b"\r\n", start):
            return self._take(start + 2)
        match = _EMPTY_LINE.search(buf, max(start, self._scanned - 2))
        if match is not None:
            return self._take(match.end())
        self.newlines += buf.count(b"\n", max(start, self._scanned))
        self._scanned = len(buf)
        return None

    def _take(self, end: int) -> bytes:
        data = bytes(self._buf[self._pos : end])
        self._pos = self._scanned = end
        self.newlines = 0
        return data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    @property
    def partial(self) -> bool:
        return len(self._buf) > self._pos


_EMPTY_LINE = re.compile(rb"\n\r?\n")


class ServerState(enum.Enum):
    """The session's phase. EOF and a protocol error end it in any phase, which then stays
    as it was (a command cut off by EOF is still pending)."""

    ENV = "ENV"  # reading the env block
    IDLE = "IDLE"  # the env block is out; no command awaits its reply
    AWAITING_REPLY = "AWAITING_REPLY"  # a command was sent
    IN_BLOCK = "IN_BLOCK"  # inside a multi-line (520-) reply


class ServerConnection:
    """The server's side of one FastAGI session."""

    def __init__(self) -> None:
        self.state = ServerState.ENV
        self._lines = _LineBuffer()
        self._block: list[str] = []  # lines of the multi-line reply being read
        self._closed: Closed | None = None
        self._error: AGIProtocolError | None = None
        self.hungup = False  # Asterisk said HANGUP

    @property
    def pending(self) -> bool:
        """A command awaits its reply."""
        return self.state in (ServerState.AWAITING_REPLY, ServerState.IN_BLOCK)

    @property
    def closed(self) -> bool:
        """EOF was reached (and Closed handed out)."""
        return self._closed is not None

    def receive_data(self, data: bytes) -> None:
        """Bytes from Asterisk; `b""` means EOF."""
        self._check_error()
        if self._lines.eof:
            if data:
                self._fail("data after EOF")
            return
        if not data:
            self._lines.eof = True
            return
        self._lines.feed(data)
        # Fail early rather than buffer a line that can never be valid.
        if self._lines.tail > MAX_LINE + 1:
            self._fail(f"line longer than {MAX_LINE} bytes")

    def next_event(self) -> ServerEvent | Literal[NeedData.NEED_DATA]:
        """The next event, NEED_DATA, or (after EOF, for ever) Closed."""
        self._check_error()
        if self._closed is not None:
            return self._closed
        try:
            if self.state is ServerState.ENV:
                if (env := self._env_block()) is not None:
                    return env
            else:
                while (line := self._next_line()) is not None:
                    event = self._handle_line(line)
                    if event is not None:
                        return event
        except AGIProtocolError as exc:
            self._error = exc
            raise
        if not self._lines.eof:
            return NEED_DATA
        complete = self.state in (ServerState.IDLE, ServerState.AWAITING_REPLY)
        self._closed = Closed(complete=complete and not self._lines.partial)
        return self._closed

    def send_command(self, verb: str, *args: str) -> bytes:
        """The bytes of one command (see encode_command); its reply is then awaited."""
        self._check_error()
        if self.state is ServerState.ENV:
            raise AGIProtocolError("command before the env block was read")
        if self._closed is not None:
            raise AGIProtocolError("command after the connection closed")
        if self.pending:
            raise AGIProtocolError("command while the previous one awaits its reply")
        data = encode_command(verb, *args)
        self.state = ServerState.AWAITING_REPLY
        return data

    def _check_error(self) -> None:
        if self._error is not None:
            raise AGIProtocolError(f"connection already failed: {self._error}")

    def _fail(self, message: str) -> NoReturn:
        self._error = AGIProtocolError(message)
        raise self._error

    def _env_block(self) -> Environment | None:
        """The env block once all of it is here, else None (and limits checked meanwhile)."""
        block = self._lines.pop_block()
        if block is None:
            if self._lines.newlines > MAX_ENV_LINES:
                raise AGIProtocolError(f"env block longer than {MAX_ENV_LINES} lines")
            if self._lines.buffered > MAX_ENV_BYTES:
                raise AGIProtocolError(f"env block longer than {MAX_ENV_BYTES} bytes")
            return None
        lines = block.split(b"\n")[:-2]  # without the empty line and what follows its "\n"
        if len(lines) > MAX_ENV_LINES:
            raise AGIProtocolError(f"env block longer than {MAX_ENV_LINES} lines")
        env: dict[str, str] = {}
        tampered = False
        for raw in lines:
            raw = raw.removesuffix(b"\r")
            if len(raw) > MAX_LINE:
                raise AGIProtocolError(f"line longer than {MAX_LINE} bytes")
            key, colon, value = raw.decode("utf-8", "replace").partition(":")
            if not colon:
                tampered = True  # the rest of a value that held a line break
            elif key in KNOWN_ENV_KEYS:
                if key in env:
                    tampered = True
                else:
                    # `agi_accountcode: ` is an empty value: drop the one space after ':' only.
                    env[key] = value.removeprefix(" ")[:MAX_ENV_VALUE]
        self.state = ServerState.IDLE
        return Environment(MappingProxyType(env), tampered)

    def _next_line(self) -> str | None:
        raw = self._lines.pop(MAX_LINE + 2)  # room for "\r\n"
        if raw is None:
            return None
        if not raw.endswith(b"\n"):
            raise AGIProtocolError(f"line longer than {MAX_LINE} bytes")
        raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > MAX_LINE:
            raise AGIProtocolError(f"line longer than {MAX_LINE} bytes")
        return raw.decode("utf-8", "replace")

    def _handle_line(self, line: str) -> ServerEvent | None:
        if self.state is ServerState.IN_BLOCK:
            return self._block_line(line)
        if line == "HANGUP":
            self.hungup = True
            return Hangup()
        if not line:
            return None  # a stray empty line says nothing
        if self.state is not ServerState.AWAITING_REPLY:
            raise AGIProtocolError(f"reply with no command pending: {line[:80]!r}")
        status = _STATUS.match(line)
        if status is None:
            raise AGIProtocolError(f"not a reply: {line[:80]!r}")
        if status.group(2) == "-":  # `520-` opens a block that ends with `520 `
            self._block = [line]
            self.state = ServerState.IN_BLOCK
            return None
        self.state = ServerState.IDLE
        return _parse_reply(line)

    def _block_line(self, line: str) -> Reply | None:
        block = self._block
        block.append(line)
        code = block[0][:3]
        if line == code or line.startswith(code + " "):
            self._block = []
            self.state = ServerState.IDLE
            return Reply(int(code), lines=tuple(block))
        if len(block) >= MAX_REPLY_LINES:
            raise AGIProtocolError(f"multi-line reply longer than {MAX_REPLY_LINES} lines")
        return None


class AsteriskConnection:
    """Asterisk's side of one session, as the transcripts show it (tests, load generator).

    Like res_agi.c it strips only the "\\n" of a command, and reads at most AGI_BUF_LEN - 1
    bytes as one command: the rest of a longer line is read as the next command.
    """

    def __init__(self) -> None:
        self._lines = _LineBuffer()
        self._env_sent = False
        self._unanswered = 0  # commands received and not yet replied to
        self._closed: Closed | None = None

    def send_environment(self, variables: Mapping[str, str]) -> bytes:
        if self._env_sent:
            raise AGIProtocolError("env block already sent")
        self._env_sent = True
        return encode_environment(variables)

    def send_hangup(self) -> bytes:
        return HANGUP_LINE

    def receive_data(self, data: bytes) -> None:
        """Bytes from the server; `b""` means EOF."""
        if self._lines.eof:
            if data:
                raise AGIProtocolError("data after EOF")
            return
        if not data:
            self._lines.eof = True
            return
        self._lines.feed(data)

    def next_event(self) -> AsteriskEvent | Literal[NeedData.NEED_DATA]:
        if self._closed is not None:
            return self._closed
        raw = self._lines.pop(AGI_BUF_LEN - 1)
        if raw is not None:
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            line = raw.decode("utf-8", "replace")
            self._unanswered += 1
            return Command(tuple(parse_command(line)), line)
        if not self._lines.eof:
            return NEED_DATA
        self._closed = Closed(complete=not self._lines.partial)
        return self._closed

    def send_reply(
        self,
        code: int = 200,
        result: str = "1",
        data: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> bytes:
        """The bytes of the reply to the oldest unanswered command (see encode_reply)."""
        if not self._unanswered:
            raise AGIProtocolError("reply with no command to answer")
        self._unanswered -= 1
        return encode_reply(code, result, data, extra)
