"""The FastAGI server: accepts Asterisk's connections and runs one handler per session.

A connection first has to send its whole env block, within `env_deadline` of being accepted.
Until then it is only a small protocol object on its transport (no task, no timer: a sweeper
closes the late ones, a few per turn of the loop), and only then does it take one of the
`max_sessions` slots and a task of its own: connections that send nothing cannot keep calls
out, and a flood of them costs little. Connections still waiting for their env block are
capped per peer host: past the cap the oldest of them is closed (a real Asterisk sends its env
block at once, so the oldest pending connection is the least likely to be a call).

Lifecycle in the manner of uvicorn: the server tracks every connection from accept.
`stop_listening()` stops accepting and leaves sessions be; `drain()` waits for the connections
up to a deadline; `shutdown()` does both, then ends the sessions still running with their
fallback route and closes or cancels the rest. Every session ends with its socket closed as
soon as the handler returns: Asterisk waits in AGI() until then. A connection is forgotten once
its socket is closed and its task, if it had one, has ended.

Not accepting means a closed listener, not one left unread: the kernel would go on completing
connections into its backlog, where Asterisk would wait for ever. Closed, the port refuses, and
Asterisk tries the next engine of a `hagi://` URL or takes its fallback at once. `listen()`
opens it again on the same port (the engine does so after an overload).

The bytes go from the transport to the sans-IO parser directly, without asyncio streams: to the
env block's parser first, then to the session (session.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import ipaddress
import itertools
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ..logs import RepeatedWarnings
from ..metrics import METRICS
from .protocol import AGIProtocolError, Environment, ServerConnection
from .session import FALLBACK_GRACE, AGIClosed, AGISession, SessionFailed

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
# Connections whose env block is late are looked for this often, and closed this many per
# turn of the event loop, so that calls get through in between.
SWEEP_EVERY = 0.01
SWEEP_BATCH = 10
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


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


@dataclass(eq=False)
class _Connection:
    """One accepted connection; a session once its env block is in and it holds a slot."""

    transport: asyncio.Transport
    peer: str
    host: str
    accepted: float  # loop time
    protocol: ServerConnection = field(default_factory=ServerConnection)
    phase: _Phase = _Phase.ENV
    session: AGISession | None = None
    task: asyncio.Task[None] | None = None  # from the env block on
    deadline: asyncio.Timeout | None = None  # the session's, in phase SESSION
    dropped: str | None = None  # why the server closed it before its env block came
    shut_down: bool = False  # its deadline brought forward by shutdown
    lost: bool = False  # its socket is closed


class _Wire(asyncio.Protocol):
    """A connection's transport protocol: bytes to the env block's parser, then the session."""

    def __init__(self, server: FastAGIServer) -> None:
        self.server = server
        self.conn: _Connection | None = None
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.conn = self.server._accepted(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            return
        if conn.session is not None:
            conn.session.feed(data)
        else:
            self.server._env_data(conn, data)

    def eof_received(self) -> bool:
        conn = self.conn
        if conn is not None and conn.session is not None:
            conn.session.feed(b"")
            return True  # half-closed: the session may still send its route
        if conn is not None:
            log.debug("fastagi connection closed before its env block", peer=conn.peer)
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        _free_transport(self.transport)
        self.transport = None
        conn = self.conn
        if conn is None:
            return
        conn.lost = True
        if conn.session is not None:
            conn.session.connection_lost()
        if conn.phase in (_Phase.ENV, _Phase.DONE):
            self.server._forget(conn)


def _free_transport(transport: asyncio.BaseTransport | None) -> None:
    """Python 3.11's socket transport keeps a bound method of itself once closed
    (python/cpython#100348, fixed in 3.12): a cycle per call, with its socket, left to the
    collector's passes on the event loop. Once the connection is lost the method is never
    called again: dropping it lets the transport go at once."""
    if sys.version_info < (3, 12) and getattr(transport, "_read_ready_cb", None) is not None:
        transport._read_ready_cb = None  # type: ignore[union-attr]


class FastAGIServer:
    def __init__(
        self, routes: Mapping[str, Handler], fallback: Fallback, config: ServerConfig
    ) -> None:
        self.routes = dict(routes)
        self.fallback = fallback
        self.config = config
        self.allowed = [ipaddress.ip_network(entry, strict=False) for entry in config.allow]
        self._verdicts: dict[str, bool] = {}  # peer host -> allowed (a few Asterisk boxes)
        self._server: asyncio.Server | None = None  # while listening
        self._taking: set[asyncio.Task[None]] = set()  # connections taken from a closed listener
        self._backlog_checked = False
        self._connections: set[_Connection] = set()
        self._idle = asyncio.Event()  # set while there is no connection
        self._idle.set()
        self._pending: dict[str, dict[_Connection, None]] = {}  # per host, oldest first
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
        return len(self._connections)

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self, *, listen: bool = True) -> None:
        """Start serving; listening at once, or from the first `listen()`."""
        self._sweeper = asyncio.create_task(self._sweep_late_env_blocks())
        if listen:
            await self.listen()

    async def listen(self) -> None:
        """Accept connections (again), on the port bound first. Raises OSError if the port
        cannot be bound; does nothing while shutting down or already listening."""
        if self.draining or self._server is not None:
            return
        server = await asyncio.get_running_loop().create_server(
            lambda: _Wire(self),
            self.config.host,
            self.port,
            reuse_address=True,
            backlog=self.config.backlog,
        )
        if self.draining:  # shut down while binding
            server.close()
            return
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
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
        server, self._server = self._server, None
        if server is None:
            return
        for listener in server.sockets:
            self._take_completed(listener.dup())
        server.close()
        log.info("fastagi not listening", port=self.port)

    def _take_completed(self, listener: socket.socket) -> None:
        with listener:  # a descriptor of our own on the listening socket
            listener.setblocking(False)
            while True:
                try:
                    sock, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    return  # none left
                except OSError as exc:  # out of descriptors: the rest are reset
                    log.error("fastagi could not take a completed connection", error=repr(exc))
                    return
                task = asyncio.get_running_loop().create_task(self._take(sock))
                self._taking.add(task)
                task.add_done_callback(self._taking.discard)

    async def _take(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: _Wire(self), sock)
        except OSError as exc:
            sock.close()
            log.warning("fastagi connection lost while taken", error=repr(exc))

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` for every connection to end; True if they all did."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                if self._taking:
                    await asyncio.wait(set(self._taking))
                await self._idle.wait()
        return not self._connections and not self._taking

    async def shutdown(self) -> None:
        """Stop accepting; let connections finish up to the drain deadline; then end sessions
        with their fallback route and cancel the rest, and wait for all of them."""
        if self.draining:
            return
        self.draining = True
        self.stop_listening()
        if self._connections or self._taking:
            log.info("draining sessions", sessions=self.active_sessions)
        if not await self.drain(self.config.drain_deadline):
            late = list(self._connections)
            log.warning("ending sessions after the drain deadline", sessions=self.active_sessions)
            now = asyncio.get_running_loop().time()
            for conn in late:
                if conn.phase is _Phase.ENV:
                    conn.transport.close()  # nothing to route yet
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
                        conn.transport.abort()
                await self.drain(CANCEL_WAIT)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.wait([self._sweeper])
        self._warnings.flush()

    # --- one connection --------------------------------------------------------------------

    def _accepted(self, transport: asyncio.Transport) -> _Connection | None:
        address = transport.get_extra_info("peername") or ("", 0)
        peer = f"{address[0]}:{address[1]}"
        if not self._is_allowed(address[0]):
            METRICS.connection_dropped("not_allowed")
            self._warnings.warning("fastagi peer not allowed", peer=peer)
            transport.close()
            return None
        conn = _Connection(transport, peer, address[0], asyncio.get_running_loop().time())
        self._connections.add(conn)
        self._idle.clear()
        pending = self._pending.setdefault(conn.host, {})
        if len(pending) >= self.config.max_pending_per_peer:
            self._drop(next(iter(pending)), "peer_pending_cap")
        pending[conn] = None
        return conn

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
            conn.transport.close()
            return
        if not isinstance(env, Environment):
            return  # NEED_DATA
        self._unpend(conn)
        conn.phase = _Phase.SLOT
        session = conn.session = AGISession(
            conn.transport, conn.protocol, env, conn.peer, conn.accepted
        )
        session.pump()  # whatever came after the env block (a HANGUP)
        conn.task = asyncio.get_running_loop().create_task(self._serve(conn))

    def _unpend(self, conn: _Connection) -> None:
        pending = self._pending.get(conn.host)
        if pending is not None:
            pending.pop(conn, None)
            if not pending:
                del self._pending[conn.host]

    def _forget(self, conn: _Connection) -> None:
        """The connection is gone."""
        self._unpend(conn)
        self._connections.discard(conn)
        if not self._connections:
            self._idle.set()

    def _drop(self, conn: _Connection, why: str) -> None:
        """Close a connection still without its env block."""
        self._unpend(conn)
        conn.dropped = why
        conn.transport.close()
        METRICS.connection_dropped(why)
        if why == "peer_pending_cap":
            self._warnings.warning(
                "fastagi: too many connections from one peer without an env block; "
                "the oldest closed",
                peer=conn.peer,
                cap=self.config.max_pending_per_peer,
            )
        else:
            self._warnings.warning(
                "fastagi env block not received in time; connection closed",
                peer=conn.peer,
                deadline=self._env_deadline,
            )

    @property
    def _env_deadline(self) -> float:
        return min(self.config.env_deadline, self.config.session_deadline)

    async def _sweep_late_env_blocks(self) -> None:
        """Close the connections whose env block is late, oldest first, a batch per turn of
        the loop: idle connections that came together (and come back when closed) go a few at
        a time rather than all in one turn that would hold up every call."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            late = loop.time() - self._env_deadline
            closed = 0
            for pending in list(self._pending.values()):
                while pending:  # empty once gone while others ran
                    conn = next(iter(pending))  # the oldest
                    if conn.accepted > late:
                        break
                    del pending[conn]
                    self._drop(conn, "no_env_block")
                    closed += 1
                    if closed % SWEEP_BATCH == 0:
                        await asyncio.sleep(0)

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
                with structlog.contextvars.bound_contextvars(session=session_id):
                    await self._run(conn)
            finally:
                del self._sessions[session_id]
                self._slots.release()
        finally:
            conn.phase = _Phase.DONE
            conn.session.close()
            # A handler's fallback holds the session (a cycle): drop it, so that the call's
            # objects are freed now, not by the collector's full passes on the event loop.
            conn.session.on_failure = None
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
        deadline = conn.deadline = asyncio.timeout_at(
            session.accepted + self.config.session_deadline
        )
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
