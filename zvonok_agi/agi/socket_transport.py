"""A non-blocking socket driven by the event loop's reader callback: the FastAGI server's
connections, without asyncio's transports.

An asyncio transport costs a call about a dozen objects, a task and a few turns of the loop to
set up and as many to close (a deferred `connection_made`, a deferred `connection_lost`). A
FastAGI connection needs much less: read what comes, write one short command at a time, close.
This is that: the bytes go to `data_received` in the turn they are read, a write goes to the
socket at once (buffered only if the socket takes part of it), and a close is done when it is
asked for. Subclasses say what the bytes are for.
"""

from __future__ import annotations

import asyncio
import socket


class SocketTransport:
    """The transport interface the session uses (`write`, `close`, `is_closing`,
    `pause_reading`, `abort`) over a connected non-blocking socket."""

    __slots__ = ("_loop", "_sock", "_fd", "_reading", "_buffer", "_closing", "lost")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._reading = False
        self._buffer = bytearray()  # what the socket did not take yet
        self._closing = False
        self.lost = False  # the socket is closed

    # --- for subclasses --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError

    def eof_received(self) -> bool:
        """The peer closed its side: True to keep the socket open for writing."""
        return False

    def connection_lost(self) -> None:
        """The socket is closed (by either side, or on an error)."""

    # --- the transport ---------------------------------------------------------------------

    def start_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._readable)

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        if self._buffer:
            self._buffer += data
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.abort()
            return
        if sent < len(data):
            self._buffer += data[sent:]
            self._loop.add_writer(self._fd, self._writable)

    def close(self) -> None:
        """Stop reading; close once what was written is sent."""
        if self._closing:
            return
        self._closing = True
        self.pause_reading()
        if not self._buffer:
            self._close()

    def abort(self) -> None:
        """Close at once, dropping what was not sent."""
        self._closing = True
        self.pause_reading()
        if self._buffer:
            self._buffer.clear()
            self._loop.remove_writer(self._fd)
        self._close()

    # --- inside ------------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data = self._sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset
            self.abort()
            return
        if data:
            self.data_received(data)
            return
        self.pause_reading()
        if not self.eof_received():
            self.close()

    def _writable(self) -> None:
        try:
            sent = self._sock.send(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        del self._buffer[:sent]
        if not self._buffer:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._close()

    def _close(self) -> None:
        if self.lost:
            return
        self.lost = True
        self._sock.close()
        self.connection_lost()
