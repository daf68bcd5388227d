"""Composition root: the store, the routing cache, the FastAGI server, wired from settings."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial

import structlog
from redis.exceptions import RedisError
from redis.utils import get_lib_version

from . import phone
from .agi.inbound import InboundRouter, send_engine_error
from .agi.server import FastAGIServer, ServerConfig
from .config import Settings
from .health import Admission, Heartbeat
from .metrics import start_metrics_server
from .store import connection
from .store.embedded import EmbeddedRedis
from .store.history import CallbackHistory
from .store.multiplexed import MultiplexedRedis, multiplexed_client
from .store.routing_data import RoutingCache, RoutingData
from .systemd import PINGS_PER_PERIOD, SystemdNotifier
from .tasks import cancel_and_wait
from .watchdog import Watchdog, install_stall_hook

log = structlog.get_logger(__name__)

LISTEN_RETRY = 1.0  # seconds before trying again to listen on a port that could not be bound


def redis_client(url: str, settings: Settings, connections: int | None = None) -> connection.Client:
    """A client for a single server, a Sentinel-watched master or a Cluster, that fails fast
    (see store/connection.py), with `connections` at most (default: redis.max_connections;
    per node of a Cluster)."""
    return connection.redis_client(
        url,
        socket_timeout=settings.redis.socket_timeout,
        connect_timeout=settings.redis.connect_timeout,
        max_connections=connections or settings.redis.max_connections,
        tls=settings.redis.tls,
    )


def redis_url(settings: Settings) -> str:
    """The configured Redis's URL; with none, the embedded server's."""
    return settings.redis.url or EmbeddedRedis(settings.redis.data_dir).url


@contextlib.asynccontextmanager
async def open_redis(
    settings: Settings, *, supervise: bool, connections: int | None = None
) -> AsyncIterator[connection.Client]:
    """The configured Redis; with no URL, the embedded server.

    `supervise=True` (the engine) starts the embedded server and restarts it if it dies; it
    fails (DataDirInUse) if another process runs the server of that data directory. Tools
    (`load`, `route`) use the engine's server when it runs, else start one for their own use.
    """
    embedded: EmbeddedRedis | None = None
    url = settings.redis.url
    if not url:
        embedded = EmbeddedRedis(settings.redis.data_dir)
        url = embedded.url
    async with contextlib.AsyncExitStack() as stack:
        if embedded is not None:
            if supervise:
                await stack.enter_async_context(embedded)
            elif await asyncio.to_thread(embedded.attach):
                stack.push_async_callback(asyncio.to_thread, embedded.stop)
        client = redis_client(url, settings, connections)
        stack.push_async_callback(connection.close, client)
        await connection.learn_topology(client)
        yield client


class Engine:
    """The running engine: FastAGI in front, the routing cache and the history behind it.

    It takes calls only while it can route them: the FastAGI server listens once the routing
    data is loaded, and not while the event loop is overloaded (see `health.Admission`).
    """

    def __init__(self, settings: Settings, *, own_process: bool = False) -> None:
        self.settings = settings
        # The process is the engine's alone (`serve`): each full load is frozen out of the
        # collector's passes (see `settle_heap`), and the Redis connections are opened before
        # the server listens.
        self.own_process = own_process
        self.server: FastAGIServer | None = None
        self.cache: RoutingCache | None = None
        self.redis: connection.Client | None = None
        self.heartbeat = Heartbeat()
        agi = settings.agi
        self.admission = Admission(agi.overload_lag, agi.overload_for, agi.overload_recovery)
        self.refusing: str | None = None  # why the engine does not take calls now
        self._listening: asyncio.Task[None] | None = None
        self._listen_again_at = 0.0
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Engine:
        s = self.settings
        try:
            self.redis = await self._stack.enter_async_context(open_redis(s, supervise=True))
            # The start so far and the first connection (redis-py reads its version from the
            # package's metadata) each take ~1 ms of CPU: two loop steps, not one of ~2 ms.
            await asyncio.sleep(0)
            data = RoutingData(self.redis, s.redis.key_prefix)
            on_load = gc.freeze if self.own_process else None
            self.cache = RoutingCache(data, s.redis.refresh_interval, on_load)
            with collector_paused() if self.own_process else contextlib.nullcontext():
                await self.cache.start()
            self._stack.push_async_callback(self.cache.stop)
            calls = multiplexed_client(
                redis_url(s),
                socket_timeout=s.redis.socket_timeout,
                connect_timeout=s.redis.connect_timeout,
                tls=s.redis.tls,
            )
            if calls is not None:
                self._stack.push_async_callback(calls.aclose)
            history = CallbackHistory(
                self.redis,
                s.redis.key_prefix,
                s.routing.callback_window,
                claim_replicas=s.redis.claim_replicas,
                claim_wait=s.redis.claim_wait,
                calls=calls,
            )
            router = InboundRouter(
                self.cache,
                history,
                s.dialplan,
                s.routing.callback_window,
                region=s.routing.default_region,
                batch=s.agi.batch_variables,
                batch_retry=s.agi.batch_retry_interval,
            )
            config = ServerConfig(
                host=s.agi.host,
                port=s.agi.port,
                allow=s.agi.allow,
                max_sessions=s.agi.max_sessions,
                session_deadline=s.agi.session_deadline,
                drain_deadline=s.agi.drain_deadline,
                env_deadline=s.agi.env_deadline,
                max_pending_per_peer=s.agi.max_pending_per_peer,
                backlog=s.agi.backlog,
            )
            self.server = FastAGIServer(
                {"inbound": router}, partial(send_engine_error, router), config
            )
            warm_up()
            if self.own_process:
                await open_connections(calls or self.redis, s.redis.max_connections - 1)
            # Stopped last: the heartbeat goes on through the drain.
            self._stack.callback(self.heartbeat.stop)
            self.refusing = self.admission.refusal(self.cache.loaded)
            if self.refusing is not None:
                log.warning("fastagi not listening until the routing data is loaded")
            await self.server.start(listen=self.refusing is None)
            self._stack.push_async_callback(self.server.shutdown)
            self._stack.push_async_callback(lambda: cancel_and_wait(self._listening))
            if s.agi.overload_lag > 0 or self.refusing is not None:
                self.heartbeat.listeners.append(self._admit)
                self.heartbeat.start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    def _admit(self, now: float, lag: float) -> None:
        """On every heartbeat: listen while the engine can route calls, else refuse them."""
        assert self.server is not None and self.cache is not None
        self.admission.observe(now, lag)
        why = self.admission.refusal(self.cache.loaded)
        if why != self.refusing:
            if why is None:
                log.info("fastagi taking calls again")
            else:
                log.warning("fastagi refusing calls", reason=why, lag_ms=round(lag * 1000))
            self.refusing = why
        if why is not None:
            self.server.stop_listening()
        elif not self.server.listening and self._listening is None:
            if now >= self._listen_again_at and not self.server.draining:
                self._listening = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        assert self.server is not None
        try:
            await self.server.listen()
        except OSError as exc:
            log.error("fastagi cannot listen again", error=repr(exc), retry_in=LISTEN_RETRY)
            self._listen_again_at = time.monotonic() + LISTEN_RETRY
        finally:
            self._listening = None


async def serve(settings: Settings, *, with_admin: bool = False) -> None:
    """Run the engine until SIGTERM or SIGINT, then drain. `with_admin`: the admin API and the
    numbers page too, in this process (a demo or a small install; see docs/control-plane.md).

    Watched from two sides (docs/operations.md, section 6): the watchdog thread
    ends the process when the event loop stops, and under systemd (Type=notify) the loop
    sends WATCHDOG=1, so that systemd ends a process frozen from outside."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    log.info("event loop", loop=type(loop).__module__.partition(".")[0])
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    install_stall_hook()
    notifier = SystemdNotifier.from_environ()
    stop_metrics = None
    if settings.metrics.enabled:
        stop_metrics = start_metrics_server(settings.metrics.host, settings.metrics.port)
    if with_admin:
        # The admin server's modules take ~0.5 s to import: imported before the engine
        # listens, not on its loop while it serves (calls waited; the routing data's
        # blocking read timed out).
        from .numbers.commands import admin_server

        importlib.import_module(".web.server", __package__)
    async with contextlib.AsyncExitStack() as stack:
        engine = await stack.enter_async_context(Engine(settings, own_process=True))
        assert engine.server is not None
        if with_admin:  # its Redis may be the engine's embedded one: started after it
            await stack.enter_async_context(admin_server(settings))
        report = None
        if notifier is not None:
            stack.callback(notifier.close)
            report = _SystemdReport(notifier, engine)
            engine.heartbeat.listeners.append(report)
            engine.heartbeat.start()
        if settings.watchdog.enabled:
            watchdog = Watchdog(
                engine.heartbeat, settings.watchdog.timeout, settings.watchdog.heartbeat_file
            )
            _check_systemd_watchdog(notifier, watchdog)
            watchdog.start()
            stack.callback(watchdog.stop)  # after the drain: it watches the drain too
        await stop.wait()
        log.info("stopping: draining sessions")
        if report is not None:
            report.stopping()
        await engine.server.shutdown()
    if stop_metrics is not None:
        stop_metrics()
    log.info("stopped")


def settle_heap() -> None:
    """Before the event loop runs: what the imports and the settings made lives as long as the
    process. Collected once, then frozen: the collector's passes never walk it again (a full
    pass over it holds the loop for tens of ms). Each full load of the routing data is frozen
    in its turn (`Engine(own_process=True)`).

    Before that, what the first Redis connection would pay for on the loop: redis-py reads its
    own version from the package's metadata for each connection, and the first read lists
    the import path (~2 ms; ~0.5 ms each later one)."""
    get_lib_version()
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No pass of the garbage collector meanwhile: the first full load, before the server
    listens, leaves little garbage, and what it keeps is frozen right after it."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def warm_up() -> None:
    """What the first calls would otherwise pay for once, on the event loop: the numbering
    plan's data, read on the first caller's number."""
    phone.normalize("+7 495 123-45-67")


async def open_connections(client: connection.Client | MultiplexedRedis, count: int) -> None:
    """Opens now the connections the calls' commands will take: the one they share, or
    (a Cluster, TLS: redis-py's pool) `count` of the pool's. A new pooled connection costs about
    1 ms of CPU on the event loop (redis-py reads its own version from the package's metadata
    and names itself to the server): paid before the server listens, not by the calls that
    would otherwise grow the pool. A Redis away now is no error: the calls connect later."""
    if isinstance(client, MultiplexedRedis):
        with contextlib.suppress(RedisError, OSError):
            await client.execute("PING")
        return
    await asyncio.gather(*(client.ping() for _ in range(count)), return_exceptions=True)


DRAINING = "draining calls"


class _SystemdReport:
    """On every heartbeat: WATCHDOG=1 when due; READY=1 once the engine takes calls; the
    engine's state as STATUS= whenever it changes."""

    def __init__(self, notifier: SystemdNotifier, engine: Engine) -> None:
        self.notifier = notifier
        self.engine = engine
        self.ready = False
        self.status = ""
        self(time.monotonic(), 0.0)

    def __call__(self, now: float, lag: float) -> None:
        server = self.engine.server
        assert server is not None
        if server.draining:
            status = DRAINING
        elif self.engine.refusing is None and server.listening:
            status = f"taking calls on {server.config.host}:{server.port}"
        else:
            status = f"refusing calls: {self.engine.refusing or 'not listening'}"
        if status != self.status:
            self.status = status
            if not self.ready and server.listening:
                self.ready = True
                self.notifier.ready(status)
            else:
                self.notifier.status(status)
        self.notifier.ping(now)

    def stopping(self) -> None:
        self.status = DRAINING
        self.notifier.stopping(DRAINING)


def _check_systemd_watchdog(notifier: SystemdNotifier | None, watchdog: Watchdog) -> None:
    """systemd must not end a stalled engine before its own watchdog has logged why."""
    if notifier is None or notifier.watchdog_period is None:
        return
    if notifier.watchdog_period * (1 - 1 / PINGS_PER_PERIOD) <= watchdog.acts_within:
        log.warning(
            "systemd's WatchdogSec is too short for watchdog.timeout: systemd may end a "
            "stalled engine before its watchdog logs why",
            watchdog_sec=notifier.watchdog_period,
            shortest_advised=round(watchdog.acts_within / (1 - 1 / PINGS_PER_PERIOD) + 0.01, 2),
        )
