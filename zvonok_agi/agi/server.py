"""The FastAGI server: accepts Asterisk's connections and runs one handler per session.

A connection first has to send its whole env block, within `env_deadline` of being accepted.
Until its first byte it is only a file descriptor in a selector of the server's own (no socket
object, transport, task or timer: nothing the garbage collector has to walk, which in a flood
of idle connections paused the loop for milliseconds at a time); from its first byte it is a
socket read by the loop's reader callback, with the env block's parser; only with the whole
block does it take one of the `max_sessions` slots and a task. A sweeper closes the late
ones, a few per turn of the loop. Connections that send nothing cannot keep calls out, and a
flood of them costs little.
Connections still waiting for their env block are capped per peer host: past the cap the
oldest of them is closed, a silent one first (a real Asterisk sends its env block at once, so
the oldest pending connection is the least likely to be a call).

Lifecycle in the manner of uvicorn: the server tracks every connection from accept.
`stop_listening()` stops accepting and leaves sessions be; `drain()` waits for the connections
up to a deadline; `shutdown()` does both, then ends the sessions still running with their
fallback route and closes or cancels the rest. Every session ends with its socket closed as
soon as the handler returns: Asterisk waits in AGI() until then. A connection is forgotten once
its socket is closed and its task, if it had one, has ended.

The server accepts from listening sockets of its own. Not accepting means a closed listener,
not one left unread: the kernel would go on completing connections into its backlog, where
Asterisk would wait for ever. Closed, the port refuses, and Asterisk tries the next engine of a
`hagi://` URL or takes its fallback at once. `listen()` opens it again on the same port (the
engine does so after an overload).

The bytes go from the socket to the sans-IO parser directly, without asyncio's transports or
streams (socket_transport.py): to the env block's parser first, then to the session
(session.py). Bytes a real Asterisk sent with its connection are read in the turn that accepts
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import functools
import ipaddress
import itertools
import os
import selectors
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ..logs import RepeatedWarnings
from ..metrics import METRICS
from .protocol import AGIProtocolError, Environment, ServerConnection
from .session import FALLBACK_GRACE, AGIClosed, AGISession, SessionFailed
from .socket_transport import SocketTransport

log = structlog.get_logger(__name__)

MAX_VERDICTS = 1024  # peer hosts whose allowlist verdict is remembered

Handler = Callable[[AGISession], Awaitable[None]]
Fallback = Callable[[AGISession, str], Awaitable[None]]

# How long a session whose env block is in waits for a free slot before it is turned away.
SLOT_WAIT = 0.2
# What a failed session's fallback may take in all (its handler bounds the sending itself to
# FALLBACK_GRACE; the rest is for its clean-up, such as giving back a claim).
FAILURE_BUDGET = FALLBACK_GRACE + 1.0
# After cancelling what was left at shutdown, how long to wait for it to end.
CANCEL_WAIT = 1.0
# Sessions past their deadline and connections whose env block is late are looked for this
# often; the late connections are closed at most this many at a time (1,000 a second): a flood
# of idle connections is spread out, calls get through.
SWEEP_EVERY = 0.01
SWEEP_BATCH = 10
# Connections accepted per turn of the loop: a burst is taken a batch at a time, calls between.
# An accepted connection is read, its env block parsed and its session started in that turn
# (~50 us): a batch of 64 took 3-4 ms of CPU in a burst of 400, of 16 at most 1.7 ms.
ACCEPT_BATCH = 16
# Errors of accept() that lost one connection (accept(2): retry); on any other (out of
# descriptors, of memory) accepting pauses this long instead of spinning.
ACCEPT_LOST = {
    errno.ECONNABORTED,
    errno.EPROTO,
    errno.ENETDOWN,
    errno.ENOPROTOOPT,
    errno.EHOSTDOWN,
    errno.EHOSTUNREACH,
    errno.EOPNOTSUPP,
    errno.ENETUNREACH,
}
ACCEPT_RETRY = 1.0
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")
READ_SIZE = 65536


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 4573
    allow: Iterable[str] = ("127.0.0.1/32", "::1/128")
    max_sessions: int = 500
    session_deadline: float = 3.0
    drain_deadline: float = 5.0
    env_deadline: float = 1.0
    max_pending_per_peer: int = 2000
    backlog: int = 1024


class _Phase(enum.Enum):
    ENV = "ENV"  # waiting for its env block
    SLOT = "SLOT"  # env block in, waiting for a session slot
    SESSION = "SESSION"  # its handler runs, under the session deadline
    ENDING = "ENDING"  # sending a fallback route, cleaning up, closing
    DONE = "DONE"  # its task has ended; forgotten once its socket is closed


class _Connection(SocketTransport):
    """One accepted connection that has sent something: its env block's parser until the
    block is in, then a session once it holds a slot (the session's transport)."""

    __slots__ = (
        "server",
        "peer",
        "host",
        "accepted",
        "protocol",
        "phase",
        "session",
        "task",
        "deadline",
        "shut_down",
    )

    def __init__(
        self, server: FastAGIServer, sock: socket.socket, address: tuple, accepted: float
    ) -> None:
        super().__init__(server.loop, sock)
        self.server = server
        self.peer = _peer(address)
        self.host: str = address[0]
        self.accepted = accepted  # loop time
        self.protocol = ServerConnection()
        self.phase = _Phase.ENV
        self.session: AGISession | None = None
        self.task: asyncio.Task[None] | None = None  # from the env block on
        self.deadline: asyncio.Timeout | None = None  # the session's, in phase SESSION
        self.shut_down = False  # its deadline brought forward by shutdown

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.feed(data)
        else:
            self.server._env_data(self, data)

    def eof_received(self) -> bool:
        if self.session is not None:
            self.session.feed(b"")
            return True  # half-closed: the session may still send its route
        log.debug("fastagi connection closed before its env block", peer=self.peer)
        return False

    def connection_lost(self) -> None:
        if self.session is not None:
            self.session.connection_lost()
        if self.phase in (_Phase.ENV, _Phase.DONE):
            self.server._forget(self)


@dataclass(eq=False)
class _Peer:
    """A peer host's connections still without their env block, each kind oldest first."""

    silent: dict[int, float] = field(default_factory=dict)  # descriptor -> accepted
    reading: dict[_Connection, None] = field(default_factory=dict)  # sent part of it

    def __len__(self) -> int:
        return len(self.silent) + len(self.reading)


class FastAGIServer:
    def __init__(
        self, routes: Mapping[str, Handler], fallback: Fallback, config: ServerConfig
    ) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # the running one, from start()
        self.routes = dict(routes)
        self.fallback = fallback
        self.config = config
        self.allowed = [ipaddress.ip_network(entry, strict=False) for entry in config.allow]
        self._verdicts: dict[str, bool] = {}  # peer host -> allowed (a few Asterisk boxes)
        self._listeners: list[socket.socket] = []  # while listening
        self._silent: selectors.BaseSelector | None = None  # accepted, not a byte yet
        self._backlog_checked = False
        self._connections: set[_Connection] = set()  # those that have sent something
        self._idle = asyncio.Event()  # set while there is no connection
        self._idle.set()
        self._pending: dict[str, _Peer] = {}  # per host: those without their env block
        self._sessions: dict[int, _Connection] = {}
        self._ids = itertools.count(1)
        self._slots = asyncio.Semaphore(config.max_sessions)
        self._warnings = RepeatedWarnings(log)
        self._sweeper: asyncio.Task[None] | None = None
        self.port = config.port  # the bound port once started (config.port may be 0)
        self.draining = False
        self.sessions_total = 0
        self.sessions_rejected = 0

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    @property
    def connections(self) -> int:
        """Open connections, sessions or not."""
        silent = len(self._silent.get_map()) if self._silent is not None else 0
        return len(self._connections) + silent

    @property
    def listening(self) -> bool:
        return bool(self._listeners)

    async def start(self, *, listen: bool = True) -> None:
        """Start serving; listening at once, or from the first `listen()`."""
        self.loop = asyncio.get_running_loop()
        self._silent = selectors.DefaultSelector()
        self.loop.add_reader(self._silent.fileno(), self._first_bytes)
        self._sweeper = asyncio.create_task(self._sweep())
        if listen:
            await self.listen()

    async def listen(self) -> None:
        """Accept connections (again), on the port bound first. Raises OSError if the port
        cannot be bound; does nothing while shutting down or already listening."""
        if self.draining or self._listeners:
            return
        loop = asyncio.get_running_loop()
        addresses = await loop.getaddrinfo(
            self.config.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        if self.draining or self._listeners:  # shut down or listening while resolving
            return
        listeners = []
        try:
            for family, _, _, _, address in dict.fromkeys(addresses):
                if listeners:  # port 0: every address on the port the first one got
                    address = (address[0], self.port, *address[2:])
                listener = socket.create_server(address, family=family, backlog=self.config.backlog)
                listeners.append(listener)
                self.port = listener.getsockname()[1]
        except OSError:
            for listener in listeners:
                listener.close()
            raise
        for listener in listeners:
            listener.setblocking(False)
            loop.add_reader(listener.fileno(), self._accept, listener)
        self._listeners = listeners
        log.info("fastagi listening", host=self.config.host, port=self.port)
        if not self._backlog_checked:
            self._backlog_checked = True
            somaxconn = _somaxconn()
            if somaxconn is not None and somaxconn < self.config.backlog:
                log.warning(
                    "listen backlog capped by the kernel: raise net.core.somaxconn",
                    backlog=self.config.backlog,
                    somaxconn=somaxconn,
                )

    def stop_listening(self) -> None:
        """Accept no more connections; those accepted go on. The connections the kernel has
        already completed are taken first: closing the listener would reset them, and
        Asterisk has sent their env blocks already."""
        listeners, self._listeners = self._listeners, []
        if not listeners:
            return
        loop = asyncio.get_running_loop()
        for listener in listeners:
            loop.remove_reader(listener.fileno())
            self._accept(listener, batch=None)
            listener.close()
        log.info("fastagi not listening", port=self.port)

    def _accept(self, listener: socket.socket, batch: int | None = ACCEPT_BATCH) -> None:
        """Take up to `batch` completed connections (None: all) from the listener."""
        taken = 0
        while batch is None or taken < batch:
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return  # none left
            except OSError as exc:
                if exc.errno in ACCEPT_LOST:
                    continue  # that one was lost before it was taken
                log.error("fastagi cannot accept: pausing", error=repr(exc), seconds=ACCEPT_RETRY)
                self._pause_accepting(listener)
                return
            taken += 1
            self._admit(sock, address)

    def _pause_accepting(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(listener.fileno())

        def resume() -> None:
            if listener in self._listeners:
                loop.add_reader(listener.fileno(), self._accept, listener)

        loop.call_later(ACCEPT_RETRY, resume)

    def _admit(self, sock: socket.socket, address: tuple) -> None:
        """An accepted connection from an allowed host: its first bytes, if they are in (a
        real Asterisk's env block usually is), else silent until they come."""
        if not self._is_allowed(address[0]):
            sock.close()
            METRICS.connection_dropped("not_allowed")
            self._warnings.warning("fastagi peer not allowed", peer=_peer(address))
            return
        peer = self._pending.get(address[0])
        if peer is not None and len(peer) >= self.config.max_pending_per_peer:
            if peer.silent:
                self._close_silent(next(iter(peer.silent)), "peer_pending_cap")
            else:
                self._drop(next(iter(peer.reading)), "peer_pending_cap")
        self._idle.clear()
        sock.setblocking(False)
        self._first_read(sock, address, self.loop.time())

    def _first_read(self, sock: socket.socket, address: tuple, accepted: float) -> None:
        """A connection that has sent something is read from the loop's reader callback, one
        that has not waits in the silent selector, one that only closed (or was reset) is
        closed."""
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            assert self._silent is not None
            fd = sock.detach()
            self._silent.register(fd, selectors.EVENT_READ, address)
            self._pending_of(address[0]).silent[fd] = accepted
            return
        except OSError:
            data = b""
        if not data:
            sock.close()
            log.debug("fastagi connection closed before its env block", peer=_peer(address))
            self._check_idle()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(self, sock, address, accepted)
        self._connections.add(conn)
        conn.start_reading()
        self._env_data(conn, data)
        if conn.phase is _Phase.ENV and not conn.lost:  # the rest of its env block to come
            self._pending_of(conn.host).reading[conn] = None

    def _pending_of(self, host: str) -> _Peer:
        peer = self._pending.get(host)
        if peer is None:
            peer = self._pending[host] = _Peer()
        return peer

    def _first_bytes(self) -> None:
        """Silent connections that have sent something, or closed."""
        assert self._silent is not None
        for key, _ in self._silent.select(0):
            self._silent.unregister(key.fd)
            accepted = self._unpend_silent(key.fd, key.data)
            family = socket.AF_INET6 if len(key.data) == 4 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM, 0, key.fd)
            self._first_read(sock, key.data, accepted)

    def _close_silent(self, fd: int, why: str | None) -> None:
        """Close a connection that has not sent a byte (why None: at shutdown)."""
        assert self._silent is not None
        address = self._silent.unregister(fd).data
        self._unpend_silent(fd, address)
        os.close(fd)
        if why is not None:
            self._dropped(_peer(address), why)
        self._check_idle()

    def _unpend_silent(self, fd: int, address: tuple) -> float:
        """Forget a silent connection's place among its peer's pending ones; when accepted."""
        peer = self._pending[address[0]]
        accepted = peer.silent.pop(fd)
        if not peer:
            del self._pending[address[0]]
        return accepted

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` for every connection to end; True if they all did."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return not self.connections

    async def shutdown(self) -> None:
        """Stop accepting; let connections finish up to the drain deadline; then end sessions
        with their fallback route and cancel the rest, and wait for all of them."""
        if self.draining:
            return
        self.draining = True
        self.stop_listening()
        if self._connections:
            log.info("draining sessions", sessions=self.active_sessions)
        if not await self.drain(self.config.drain_deadline):
            late = list(self._connections)
            log.warning("ending sessions after the drain deadline", sessions=self.active_sessions)
            now = asyncio.get_running_loop().time()
            self._close_every_silent()  # nothing to route yet
            for conn in late:
                if conn.phase is _Phase.ENV:
                    conn.close()  # nothing to route yet
                elif conn.phase is _Phase.SLOT and conn.task is not None:
                    conn.task.cancel()
                elif conn.phase is _Phase.SESSION and conn.deadline is not None:
                    conn.shut_down = True
                    conn.deadline.reschedule(now)  # sends the session to its fallback
            if not await self.drain(FAILURE_BUDGET + 0.5):
                for conn in list(self._connections):
                    if conn.task is not None and not conn.task.done():
                        conn.task.cancel()
                    else:
                        conn.abort()
                await self.drain(CANCEL_WAIT)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.wait([self._sweeper])
        if self._silent is not None:
            self._close_every_silent()
            asyncio.get_running_loop().remove_reader(self._silent.fileno())
            self._silent.close()
            self._silent = None
        self._warnings.flush()

    def _close_every_silent(self) -> None:
        assert self._silent is not None
        for fd in list(self._silent.get_map()):
            self._close_silent(fd, None)

    # --- one connection --------------------------------------------------------------------

    def _env_data(self, conn: _Connection, data: bytes) -> None:
        """Bytes of a connection still reading its env block; with the block, a session."""
        try:
            conn.protocol.receive_data(data)
            env = conn.protocol.next_event()
        except AGIProtocolError as exc:
            METRICS.connection_dropped("protocol_error")
            self._warnings.warning(
                "fastagi protocol error in the env block", peer=conn.peer, error=str(exc)
            )
            conn.close()
            return
        if not isinstance(env, Environment):
            return  # NEED_DATA
        self._unpend(conn)
        conn.phase = _Phase.SLOT
        session = conn.session = AGISession(conn, conn.protocol, env, conn.peer, conn.accepted)
        session.pump()  # whatever came after the env block (a HANGUP)
        conn.task = self.loop.create_task(self._serve(conn))

    def _unpend(self, conn: _Connection) -> None:
        peer = self._pending.get(conn.host)
        if peer is not None:
            peer.reading.pop(conn, None)
            if not peer:
                del self._pending[conn.host]

    def _forget(self, conn: _Connection) -> None:
        """The connection is gone. It and its session held each other: no more, so that both
        are freed at once, not by the collector on the event loop."""
        self._unpend(conn)
        self._connections.discard(conn)
        conn.session = conn.task = None
        self._check_idle()

    def _check_idle(self) -> None:
        if not self.connections:
            self._idle.set()

    def _drop(self, conn: _Connection, why: str) -> None:
        """Close a connection still without its env block."""
        self._unpend(conn)
        conn.close()
        self._dropped(conn.peer, why)

    def _dropped(self, peer: str, why: str) -> None:
        METRICS.connection_dropped(why)
        if why == "peer_pending_cap":
            self._warnings.warning(
                "fastagi: too many connections from one peer without an env block; "
                "the oldest closed",
                peer=peer,
                cap=self.config.max_pending_per_peer,
            )
        elif why == "no_env_block":
            self._warnings.warning(
                "fastagi env block not received in time; connection closed",
                peer=peer,
                deadline=self._env_deadline,
            )

    @property
    def _env_deadline(self) -> float:
        return min(self.config.env_deadline, self.config.session_deadline)

    async def _sweep(self) -> None:
        """Every SWEEP_EVERY: the sessions past their deadline go to their fallback, and the
        connections whose env block is late are closed, a batch at a time (idle connections
        that came together, and come back as soon as they are closed, are spread out instead
        of coming back together, a wave once per deadline that would hold up every call)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            now = loop.time()
            self._expire_sessions(now)
            self._close_late(now - self._env_deadline, SWEEP_BATCH)

    def _expire_sessions(self, now: float) -> None:
        """Bring the deadline of the sessions past it to now. A look at each session every
        sweep instead of a timer each: a session's timer, cancelled when it ends, stayed in the
        loop's heap with the call's context until it would have been due, seconds later."""
        late = now - self.config.session_deadline
        for conn in self._sessions.values():
            deadline = conn.deadline
            if (
                conn.accepted <= late
                and conn.phase is _Phase.SESSION
                and deadline is not None
                and deadline.when() is None  # not brought forward yet (or by shutdown)
            ):
                deadline.reschedule(now)

    def _close_late(self, late: float, most: int) -> int:
        """Close up to `most` connections accepted before `late` (loop time) that have not
        sent their env block, each peer's oldest first; how many."""
        closed = 0
        for peer in list(self._pending.values()):
            while peer.silent and closed < most:
                fd, accepted = next(iter(peer.silent.items()))
                if accepted > late:
                    break
                self._close_silent(fd, "no_env_block")
                closed += 1
            while peer.reading and closed < most:
                conn = next(iter(peer.reading))  # the first to send a byte
                if conn.accepted > late:
                    break
                self._drop(conn, "no_env_block")
                closed += 1
        return closed

    async def _serve(self, conn: _Connection) -> None:
        """A connection whose env block is in: a slot, the handler, the close."""
        assert conn.session is not None
        try:
            if not await self._take_slot():
                # The dialplan sees no decision and takes its own engine_error route.
                self.sessions_rejected += 1
                METRICS.session_rejected()
                self._warnings.warning("fastagi at capacity; session turned away", peer=conn.peer)
                return
            session_id = next(self._ids)
            self._sessions[session_id] = conn
            self.sessions_total += 1
            try:
                # The task's own context: every line it logs names the session.
                structlog.contextvars.bind_contextvars(session=session_id)
                await self._run(conn)
            finally:
                del self._sessions[session_id]
                self._slots.release()
        finally:
            conn.phase = _Phase.DONE
            # A handler's fallback holds the session (a cycle): drop it, so that the call's
            # objects are freed now, not by the collector's full passes on the event loop.
            conn.session.on_failure = None
            conn.session.close()
            if conn.lost:
                self._forget(conn)

    async def _take_slot(self) -> bool:
        """A session slot, waiting up to SLOT_WAIT for one; False if none came free."""
        if not self._slots.locked():
            await self._slots.acquire()  # at once: no timer
            return True
        try:
            async with asyncio.timeout(SLOT_WAIT):
                await self._slots.acquire()
        except TimeoutError:
            return False
        return True

    async def _run(self, conn: _Connection) -> None:
        session = conn.session
        assert session is not None
        deadline = conn.deadline = asyncio.timeout(None)  # brought forward by the sweep
        try:
            async with deadline:
                conn.phase = _Phase.SESSION
                try:
                    handler = self.routes.get(session.env.script)
                    if handler is not None:
                        await handler(session)
                        return
                    why = f"no handler for AGI script {session.env.script!r}"
                    log.error("unknown agi script", script=session.env.script)
                finally:
                    conn.phase = _Phase.ENDING  # the deadline can no longer be moved
        except AGIClosed as exc:
            why = "Asterisk closed the session"
            log.info("fastagi session closed by peer", reason=str(exc))
        except SessionFailed as exc:
            why = str(exc)
            log.warning("fastagi session failed", reason=why)
        except TimeoutError:
            if not deadline.expired():  # a timeout of the handler's own
                why = "engine error"
                log.exception("fastagi handler failed")
            elif conn.shut_down:
                why = "engine shutting down"
                log.warning("fastagi session ended by shutdown")
            else:
                why = "session deadline passed"
                log.error("fastagi session timed out", deadline=self.config.session_deadline)
        except AGIProtocolError as exc:
            why = "protocol error"
            log.error("fastagi protocol error", error=str(exc))
        except Exception as exc:
            why = "engine error"
            log.exception("fastagi handler failed", error=repr(exc))
        await self._end_failed(session, why)

    async def _end_failed(self, session: AGISession, why: str) -> None:
        """The handler's own fallback (which also cleans up), else the generic one; either
        sends its route if Asterisk is still there."""
        end = session.on_failure or functools.partial(self.fallback, session)
        try:
            async with asyncio.timeout(FAILURE_BUDGET):
                await end(why)
        except (AGIClosed, AGIProtocolError, OSError, TimeoutError) as exc:
            log.warning("fallback route not sent", error=repr(exc))
        except Exception:
            log.exception("fallback failed")

    def _is_allowed(self, host: str) -> bool:
        verdict = self._verdicts.get(host)
        if verdict is None:
            if len(self._verdicts) >= MAX_VERDICTS:  # a scan from many hosts: start afresh
                self._verdicts.clear()
            verdict = self._verdicts[host] = self._check_peer(host)
        return verdict

    def _check_peer(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allowed)


def _peer(address: tuple) -> str:
    return f"{address[0]}:{address[1]}"


def _somaxconn() -> int | None:
    """The kernel's cap on a listen backlog (Linux), None where it cannot be read."""
    try:
        return int(SOMAXCONN.read_text())
    except (OSError, ValueError):
        return None


@contextlib.asynccontextmanager
async def run_server(
    routes: Mapping[str, Handler], fallback: Fallback, config: ServerConfig
) -> AsyncIterator[FastAGIServer]:
    """A started server, shut down on exit: makes integration tests short."""
    server = FastAGIServer(routes, fallback, config)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown()
