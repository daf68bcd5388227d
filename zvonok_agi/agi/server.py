"""The FastAGI server: accepts Asterisk's connections and runs one handler per session.

Lifecycle in the manner of uvicorn: the server keeps its sessions; `shutdown()` stops accepting,
lets in-flight sessions finish up to a deadline, then ends the rest with a fallback route. Every
session ends with its socket closed as soon as the handler returns: Asterisk waits in AGI()
until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from ..metrics import METRICS
from .protocol import AGIProtocolError
from .session import AGIClosed, AGISession

log = structlog.get_logger(__name__)

MAX_VERDICTS = 1024  # peer hosts whose allowlist verdict is remembered

Handler = Callable[[AGISession], Awaitable[None]]
Fallback = Callable[[AGISession, str], Awaitable[None]]

# Time left to a session that failed or ran out of time to send its fallback route.
FALLBACK_GRACE = 0.5
# How long a session waits for a free slot before it is turned away.
SLOT_WAIT = 0.2


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 4573
    allow: Iterable[str] = ("127.0.0.1/32", "::1/128")
    max_sessions: int = 500
    session_deadline: float = 3.0
    drain_deadline: float = 5.0


@dataclass
class _Live:
    session: AGISession
    task: asyncio.Task[None]
    deadline: asyncio.Timeout | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class FastAGIServer:
    def __init__(
        self, routes: Mapping[str, Handler], fallback: Fallback, config: ServerConfig
    ) -> None:
        self.routes = dict(routes)
        self.fallback = fallback
        self.config = config
        self.allowed = [ipaddress.ip_network(entry, strict=False) for entry in config.allow]
        self._verdicts: dict[str, bool] = {}  # peer host -> allowed (a few Asterisk boxes)
        self._server: asyncio.Server | None = None
        self._live: dict[int, _Live] = {}
        self._ids = itertools.count(1)
        self._slots = asyncio.Semaphore(config.max_sessions)
        self.port = config.port  # the bound port once started (config.port may be 0)
        self.draining = False
        self.sessions_total = 0
        self.sessions_rejected = 0

    @property
    def active_sessions(self) -> int:
        return len(self._live)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self.config.host, self.config.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("fastagi listening", host=self.config.host, port=self.port)

    async def shutdown(self) -> None:
        """Stop accepting; let sessions finish up to the drain deadline; end the rest."""
        if self.draining:
            return
        self.draining = True
        if self._server is not None:
            self._server.close()
        live = list(self._live.values())
        if live:
            log.info("draining sessions", sessions=len(live))
            await asyncio.wait([item.task for item in live], timeout=self.config.drain_deadline)
        late = [item for item in self._live.values() if not item.task.done()]
        loop = asyncio.get_running_loop()
        for item in late:
            if item.deadline is not None:
                item.deadline.reschedule(loop.time())  # sends the session to its fallback
        if late:
            log.warning("ending sessions after the drain deadline", sessions=len(late))
            await asyncio.wait([item.task for item in late], timeout=FALLBACK_GRACE + 1.0)
        for item in self._live.values():
            item.task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        session = AGISession(reader, writer, peer=f"{peer[0]}:{peer[1]}")
        if not self._is_allowed(peer[0]):
            log.warning("fastagi peer not allowed", peer=session.peer)
            await session.close()
            return
        try:
            if self._slots.locked():  # wait_for costs a task: only when we must wait
                await asyncio.wait_for(self._slots.acquire(), SLOT_WAIT)
            else:
                await self._slots.acquire()
        except TimeoutError:
            # The dialplan sees no decision and takes its own engine_error route.
            self.sessions_rejected += 1
            METRICS.session_rejected()
            log.warning("fastagi at capacity; session turned away", peer=session.peer)
            await session.close()
            return
        session_id = next(self._ids)
        task = asyncio.current_task()
        assert task is not None
        item = _Live(session, task)
        self._live[session_id] = item
        self.sessions_total += 1
        try:
            with structlog.contextvars.bound_contextvars(session=session_id):
                await self._run(item)
        finally:
            del self._live[session_id]
            self._slots.release()
            await session.close()

    async def _run(self, item: _Live) -> None:
        session = item.session
        why = ""
        try:
            async with asyncio.timeout(self.config.session_deadline) as deadline:
                item.deadline = deadline
                env = await session.read_environment()
                handler = self.routes.get(env.script)
                if handler is None:
                    why = f"no handler for AGI script {env.script!r}"
                    log.error("unknown agi script", script=env.script)
                else:
                    await handler(session)
                    return
        except AGIClosed as exc:
            log.info("fastagi session closed by peer", reason=str(exc))
            return
        except TimeoutError:
            if self.draining:
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
        await self._send_fallback(session, why)

    async def _send_fallback(self, session: AGISession, why: str) -> None:
        if session.env is None or session.writer.is_closing():
            return
        send = session.on_failure or (lambda reason: self.fallback(session, reason))
        try:
            async with asyncio.timeout(FALLBACK_GRACE):
                await send(why)
        except (AGIClosed, AGIProtocolError, OSError, TimeoutError) as exc:
            log.warning("fallback route not sent", error=repr(exc))

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
