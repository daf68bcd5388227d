"""One connection that every call's commands share, for the inbound route's few commands.

Each command is written the moment it is made and its reply is matched to it in order (Redis
answers a connection's commands in the order they came): no pool, no checkout, no task and no
timer per command. redis-py spends about 90 us of CPU on a command; this about 25 us, which is
a sixth of an inbound call's CPU (see bench/README.md, issue 11).

It serves a single server (redis://, rediss://, unix://) or the master Sentinel names, over
TLS for the rediss schemes; the connection is opened on first use and again after it is lost,
Sentinel then being asked for the master anew. A command's reply is awaited at most `timeout`
seconds: one timer for the connection watches the oldest command; when it passes, every
command waiting fails and the connection is dropped (its replies can no longer be matched). A
Cluster keeps redis-py's client.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import DEFAULT_TLS, TLS, close, parse_redis_url, sentinels

Arg = str | bytes | int | float
Opener = Callable[[Callable[[], asyncio.Protocol]], Awaitable[tuple[asyncio.BaseTransport, Any]]]


def encode(args: Sequence[Arg]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif not isinstance(arg, bytes):
            arg = repr(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def _error(reply: hiredis.ReplyError) -> ResponseError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith("READONLY"):
        return ReadOnlyError(message)
    return ResponseError(message)


class _Wire(asyncio.Protocol):
    """The connection: commands out, replies matched to their futures in order."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, replies: int = 1) -> list[asyncio.Future[Any]]:
        """Write commands (`replies` of them in `data`); their replies' futures, in order."""
        if self.lost or self.transport is None:
            raise RedisConnectionError("connection to Redis lost")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        futures = [loop.create_future() for _ in range(replies)]
        self._waiting.extend((future, deadline) for future in futures)
        self.transport.write(data)
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._check_deadline)
        return futures

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while (reply := self._reader.gets()) is not False:
            if not waiting:
                self._drop(RedisConnectionError("a reply no command asked for"))
                return
            future, _ = waiting.popleft()
            if future.done():
                continue  # its caller gave up (cancelled)
            if isinstance(reply, hiredis.ReplyError):
                error = _error(reply)
                future.set_exception(error)
                if isinstance(error, ReadOnlyError):  # a master turned replica: find the new one
                    self._drop(RedisConnectionError("Redis is a replica now"))
                    return
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def close(self) -> None:
        self._drop(RedisConnectionError("connection to Redis closed"))

    def _check_deadline(self) -> None:
        self._timer = None
        # The oldest command still awaited. One its caller gave up keeps its place in the
        # queue: its reply is still to come, and is taken off when it does.
        deadline = next((due for future, due in self._waiting if not future.done()), None)
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            self._drop(RedisTimeoutError(f"no reply from Redis in {self.timeout} s"))
        else:
            self._timer = loop.call_at(deadline, self._check_deadline)

    def _drop(self, exc: Exception) -> None:
        """Fail every command waiting and close: later replies could not be matched."""
        self._fail(exc)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)
                future.exception()  # a caller cancelled meanwhile must not leave it unretrieved


class Script:
    """A Lua script run by its SHA1, loaded again (EVAL) if the server does not have it."""

    def __init__(self, client: MultiplexedRedis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return await self.client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.execute("EVAL", self.source, len(keys), *keys, *args)


class MultiplexedRedis:
    """The commands of every call on one connection (see the module's doc)."""

    def __init__(
        self,
        open_connection: Opener,
        *,
        timeout: float,
        connect_timeout: float,
        handshake: Sequence[Sequence[Arg]] = (),
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._open = open_connection
        self._on_close = on_close
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._handshake = [encode(command) for command in handshake]
        self._wire: _Wire | None = None
        self._connecting: asyncio.Task[_Wire] | None = None
        self._closed = False

    async def execute(self, *args: Arg) -> Any:
        """Send one command; its reply (hiredis' types: bytes, int, list, None)."""
        wire = self._wire
        if wire is None or wire.lost:
            wire = await self._connected()
        (future,) = wire.send(encode(args))
        return await future

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        flat = await self.execute("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        if self._wire is not None:
            self._wire.close()
            self._wire = None
        if self._on_close is not None:
            await self._on_close()

    async def _connected(self) -> _Wire:
        """The connection, opened by the first command that needs it; the others wait for it."""
        if self._closed:
            raise RedisConnectionError("client closed")
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            self._connecting.add_done_callback(self._connected_or_not)
        return await asyncio.shield(self._connecting)

    def _connected_or_not(self, task: asyncio.Task[_Wire]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._wire = task.result()

    async def _connect(self) -> _Wire:
        wire: _Wire | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, wire = await self._open(lambda: _Wire(self.timeout))
                if self._handshake:
                    for future in wire.send(b"".join(self._handshake), len(self._handshake)):
                        await future
        except BaseException as exc:
            if wire is not None:
                wire.close()
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"Redis not reached in {self.connect_timeout} s") from None
            if isinstance(exc, ssl.SSLCertVerificationError):
                raise RedisConnectionError(
                    f"Redis's TLS certificate refused: {exc.verify_message} (redis.tls_ca_file,"
                    " redis.tls_check_hostname)"
                ) from exc
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"Redis not reached: {exc!r}") from exc
            raise
        return wire


def multiplexed_client(
    url: str, *, socket_timeout: float, connect_timeout: float, tls: TLS = DEFAULT_TLS
) -> MultiplexedRedis | None:
    """The shared-connection client for the URL (see redis_client for the URLs and `tls`);
    None where redis-py's client must serve (a Cluster)."""
    target = parse_redis_url(url)
    context = tls.context() if target.tls else None
    if target.kind == "single":
        options = parse_url(url)
        return MultiplexedRedis(
            _opener(options.get("path"), options.get("host"), options.get("port"), context),
            timeout=socket_timeout,
            connect_timeout=connect_timeout,
            handshake=_handshake(options.get("username"), options.get("password"), options["db"]),
        )
    if target.kind == "sentinel":
        watchers = sentinels(
            target, socket_timeout=socket_timeout, connect_timeout=connect_timeout, tls=tls
        )

        async def open_master(factory: Callable[[], asyncio.Protocol]) -> tuple[Any, Any]:
            host, port = await watchers.discover_master(target.service)
            return await _opener(None, host, port, context)(factory)

        return MultiplexedRedis(
            open_master,
            timeout=socket_timeout,
            connect_timeout=connect_timeout,
            handshake=_handshake(target.username, target.password, target.db),
            on_close=lambda: close(watchers),
        )
    return None


def _handshake(username: str | None, password: str | None, db: int) -> list[list[Arg]]:
    commands: list[list[Arg]] = []
    if password:
        commands.append(["AUTH", *([username] if username else []), password])
    if db:
        commands.append(["SELECT", db])
    return commands


def _opener(
    path: str | None, host: str | None, port: int | None, context: ssl.SSLContext | None
) -> Opener:
    async def open_connection(factory: Callable[[], asyncio.Protocol]) -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        if path:
            return await loop.create_unix_connection(factory, path)
        server = host or "localhost"
        if context is None:
            return await loop.create_connection(factory, server, port or 6379)
        return await loop.create_connection(
            factory, server, port or 6379, ssl=context, server_hostname=server
        )

    return open_connection
