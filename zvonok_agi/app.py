"""Composition root: the store, the routing cache, the FastAGI server, wired from settings."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import AsyncIterator
from functools import partial

import redis.asyncio as aioredis
import structlog
from redis.asyncio.connection import BlockingConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from . import phone
from .agi.inbound import InboundRouter, send_engine_error
from .agi.server import FastAGIServer, ServerConfig
from .config import Settings
from .metrics import start_metrics_server
from .store.embedded import EmbeddedRedis
from .store.history import CallbackHistory
from .store.routing_data import RoutingCache, RoutingData

log = structlog.get_logger(__name__)


def redis_client(
    url: str, settings: Settings, connections: int | None = None
) -> aioredis.Redis:
    """A client that fails fast: one quick retry (a connection gone stale after a Redis
    restart), then the error, so that the caller can route without the store in time. Its
    pool is bounded, to `connections` (default: redis.max_connections): past them a command
    waits for a free connection, up to its own timeout, rather than opening one more."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=connections or settings.redis.max_connections,
        timeout=settings.redis.socket_timeout,
        socket_timeout=settings.redis.socket_timeout,
        socket_connect_timeout=settings.redis.connect_timeout,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
        decode_responses=False,
    )
    return aioredis.Redis.from_pool(pool)


@contextlib.asynccontextmanager
async def open_redis(
    settings: Settings, *, supervise: bool, connections: int | None = None
) -> AsyncIterator[aioredis.Redis]:
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
        stack.push_async_callback(client.aclose)
        yield client


class Engine:
    """The running engine: FastAGI in front, the routing cache and the history behind it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server: FastAGIServer | None = None
        self.cache: RoutingCache | None = None
        self.redis: aioredis.Redis | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Engine:
        s = self.settings
        try:
            self.redis = await self._stack.enter_async_context(open_redis(s, supervise=True))
            data = RoutingData(self.redis, s.redis.key_prefix)
            self.cache = RoutingCache(data, s.redis.refresh_interval)
            await self.cache.start()
            self._stack.push_async_callback(self.cache.stop)
            history = CallbackHistory(self.redis, s.redis.key_prefix, s.routing.callback_window)
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
            await self.server.start()
            self._stack.push_async_callback(self.server.shutdown)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()


async def serve(settings: Settings, *, with_admin: bool = False) -> None:
    """Run the engine until SIGTERM or SIGINT, then drain. `with_admin`: the admin API and the
    numbers page too, in this process (a demo or a small install; see docs/control-plane.md)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    log.info("event loop", loop=type(loop).__module__.partition(".")[0])
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stop_metrics = None
    if settings.metrics.enabled:
        stop_metrics = start_metrics_server(settings.metrics.host, settings.metrics.port)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(Engine(settings))
        if with_admin:
            from .numbers.commands import admin_server

            await stack.enter_async_context(admin_server(settings))
        # What exists now lives as long as the process: keep it out of the collector's
        # full passes, which otherwise pause calls for ~15 ms every few seconds.
        phone.normalize("+7 495 123-45-67")  # loads the numbering-plan data now
        gc.collect()
        gc.freeze()
        await stop.wait()
        log.info("stopping: draining sessions")
    if stop_metrics is not None:
        stop_metrics()
    log.info("stopped")
