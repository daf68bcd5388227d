"""One FastAGI session over asyncio streams: the sans-IO protocol driven by a socket."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .protocol import (
    NEED_DATA,
    AGIProtocolError,
    Closed,
    Environment,
    Hangup,
    Reply,
    ServerConnection,
)

READ_SIZE = 4096
# Time a session that failed or ran out of time has to send its fallback route.
FALLBACK_GRACE = 0.5


class AGIClosed(ConnectionError):
    """Asterisk closed the session."""


class SessionFailed(Exception):
    """A handler gives up with a reason: the server ends the session through its on_failure."""


class AGISession:
    """A session once its env block is in: `connection` has read it (and holds whatever came
    after it), the streams carry the rest."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: ServerConnection,
        env: Environment,
        peer: str = "",
        accepted: float | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.connection = connection
        self.env = env
        self.peer = peer
        self.host = peer.rpartition(":")[0]
        # loop time of the accept: the session deadline counts from it
        self.accepted = asyncio.get_running_loop().time() if accepted is None else accepted
        # Set by a handler that knows a better route than the server's generic fallback, for
        # when it fails, runs out of time or Asterisk goes: called once with a short reason,
        # it sends that route if it still can (within FALLBACK_GRACE) and cleans up.
        self.on_failure: Callable[[str], Awaitable[None]] | None = None

    @property
    def hungup(self) -> bool:
        return self.connection.hungup

    @property
    def closed(self) -> bool:
        """Asterisk closed its side: nothing more can be said."""
        return self.connection.closed

    async def command(self, verb: str, *args: str) -> Reply:
        """Send one command and wait for its reply; an unsolicited HANGUP is noted on the way."""
        if self.connection.pending:
            await self._reply()  # of a command whose caller was cancelled: keep in step
        try:
            data = self.connection.send_command(verb, *args)
        except AGIProtocolError as exc:
            raise AGIClosed(str(exc)) from exc
        self.writer.write(data)
        await self.writer.drain()
        return await self._reply()

    async def _reply(self) -> Reply:
        while True:
            event = await self._next_event()
            if isinstance(event, Reply):
                return event
            if isinstance(event, Closed):
                raise AGIClosed("connection closed while waiting for a reply")
            if not isinstance(event, Hangup):
                raise AGIProtocolError(f"unexpected event {event!r}")

    async def set_variable(self, name: str, value: str) -> Reply:
        return await self.command("SET VARIABLE", name, value)

    async def close(self) -> None:
        if self.writer.is_closing():
            return
        self.writer.close()
        try:
            async with asyncio.timeout(1.0):  # not wait_for: it costs a task per session
                await self.writer.wait_closed()
        except (OSError, TimeoutError):
            pass

    async def _next_event(self) -> object:
        while True:
            event = self.connection.next_event()
            if event is not NEED_DATA:
                return event
            try:
                data = await self.reader.read(READ_SIZE)
            except ConnectionError:
                data = b""
            self.connection.receive_data(data)
