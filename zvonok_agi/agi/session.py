"""One FastAGI session: the sans-IO protocol driven by the connection's socket.

Once the env block is in, the server feeds the session every byte Asterisk sends (`feed`),
straight into the parser: no streams and no reader task. Events are taken as they come: a
`HANGUP` is noted, a reply wakes the command waiting for it, EOF ends the session. A command
writes its line and awaits that reply; only one is ever outstanding (at most MAX_COMMAND_BYTES
in the write buffer), so writing needs no flow control.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .protocol import (
    NEED_DATA,
    AGIProtocolError,
    Closed,
    Environment,
    Reply,
    ServerConnection,
)
from .socket_transport import SocketTransport

# Time a session that failed or ran out of time has to send its fallback route.
FALLBACK_GRACE = 0.5


class AGIClosed(ConnectionError):
    """Asterisk closed the session."""


class SessionFailed(Exception):
    """A handler gives up with a reason: the server ends the session through its on_failure."""


class AGISession:
    """A session once its env block is in: `connection` has read it (and holds whatever came
    after it), `transport` carries the rest."""

    def __init__(
        self,
        transport: SocketTransport,
        connection: ServerConnection,
        env: Environment,
        peer: str = "",
        accepted: float | None = None,
    ) -> None:
        self.transport = transport
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
        self._waiter: asyncio.Future[Reply] | None = None  # the reply a command awaits
        self._error: AGIProtocolError | None = None  # Asterisk broke the protocol

    @property
    def hungup(self) -> bool:
        return self.connection.hungup

    @property
    def closed(self) -> bool:
        """Asterisk closed its side: nothing more can be said."""
        return self.connection.closed

    async def command(self, verb: str, *args: str) -> Reply:
        """Send one command and wait for its reply; an unsolicited HANGUP is noted on the way."""
        if self._error is not None:
            raise self._error
        if self.connection.pending:
            await self._reply()  # of a command whose caller was cancelled: keep in step
        try:
            data = self.connection.send_command(verb, *args)
        except AGIProtocolError as exc:
            raise AGIClosed(str(exc)) from exc
        self.transport.write(data)
        return await self._reply()

    async def set_variable(self, name: str, value: str) -> Reply:
        return await self.command("SET VARIABLE", name, value)

    def close(self) -> None:
        """Close the socket (Asterisk waits in AGI() until then): at once, as nothing but the
        last command line can be left to send."""
        self.transport.close()

    # --- from the transport ------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from Asterisk (`b""` for EOF)."""
        try:
            self.connection.receive_data(data)
        except AGIProtocolError as exc:
            self._broken(exc)
            return
        self.pump()

    def pump(self) -> None:
        """Take every event the parser has."""
        try:
            while (event := self.connection.next_event()) is not NEED_DATA:
                if isinstance(event, Reply):
                    self._wake(event)
                elif isinstance(event, Closed):
                    self._wake(AGIClosed("connection closed while waiting for a reply"))
                    return
                # a Hangup is noted by the parser (`hungup`)
        except AGIProtocolError as exc:
            self._broken(exc)

    def connection_lost(self) -> None:
        if not self.connection.closed:
            self.feed(b"")
        self._wake(AGIClosed("connection lost"))

    # --- inside ---------------------------------------------------------------------------------

    async def _reply(self) -> Reply:
        if self._error is not None:
            raise self._error
        if self.connection.closed:
            raise AGIClosed("connection closed while waiting for a reply")
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            return await waiter
        finally:
            # The future holds the error raised here, whose traceback holds this frame: no
            # cycle left for the collector.
            self._waiter = waiter = None

    def _wake(self, outcome: Reply | Exception) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # a reply whose command was given up, or nothing awaited
        if isinstance(outcome, Reply):
            waiter.set_result(outcome)
        else:
            waiter.set_exception(outcome)

    def _broken(self, exc: AGIProtocolError) -> None:
        """Asterisk broke the protocol: every command from now on fails with the error (the
        one waiting, if any, at once); nothing more is read."""
        self._error = exc
        self._wake(exc)
        if not self.transport.is_closing():
            self.transport.pause_reading()
