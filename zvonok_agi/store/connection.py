"""Connecting to Redis from one URL: a single server, a master watched by Sentinel, or a Cluster.

  redis://[[user]:password@]host[:port][/db]      one server
  unix:///path/redis.sock?db=0                    one server on a Unix socket
  redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db][?sentinel_password=P]
      the master Sentinel names for `service` (port 26379 if left out); the password is the
      master's, `sentinel_password` the sentinels' own (if they require one)
  redis+cluster://[[user]:password@]host:port[,host:port...]
      a Redis Cluster, found from any of these nodes (port 6379 if left out); database 0 only

`rediss://`, `rediss+sentinel://` and `rediss+cluster://` are the same over TLS: to the
server; to the sentinels and the master; to every node of the cluster. Whom to trust, and the
client's own certificate, are the redis.tls_* settings (`TLS`), not options of the URL.

Every client fails fast: per-command and connect timeouts, one immediate retry (a connection
gone stale after a restart or a failover, which also asks Sentinel for the master again), then
the error, so that a call is routed without the store in time.

The inbound route's own commands take a cheaper way where they can: one connection that
every call shares (store/multiplexed.py). Everything else goes through this module's clients.

Their connections are bounded (`BoundedPool`). To a single server or a Sentinel-watched master,
a command that finds them all busy waits for one, up to its socket timeout, rather than
opening one more: a burst of calls shares a few connections (one command takes well under a
millisecond). redis-py's Cluster client only caps them per node, and a command past the cap
fails at once: there the cap is at least CLUSTER_MIN_CONNECTIONS, so that a burst of calls
is not refused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, ConnectionPool
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
PLAIN_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_PORTS = dict.fromkeys(SENTINEL_SCHEMES, 26379) | dict.fromkeys(CLUSTER_SCHEMES, 6379)
TLS_SCHEMES = ("rediss", "rediss+sentinel", "rediss+cluster")

Client = aioredis.Redis | RedisCluster
CLUSTER_MIN_CONNECTIONS = 100  # per node


class RedisURLError(ValueError):
    pass


@dataclass(frozen=True)
class TLS:
    """Whom a TLS connection trusts and who it is: the redis.tls_* settings. An empty
    `ca_file` trusts the system's certificate authorities; `cert_file` and `key_file`, the
    client's certificate, for a server that asks for one (tls-auth-clients)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """The client's SSL context; RedisURLError names the setting whose file cannot be used."""
        try:
            context = ssl.create_default_context(cafile=self.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise RedisURLError(f"redis.tls_ca_file {self.ca_file!r}: {exc}") from exc
        context.check_hostname = self.check_hostname
        if self.cert_file or self.key_file:
            if not (self.cert_file and self.key_file):
                raise RedisURLError("redis.tls_cert_file and redis.tls_key_file go together")
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise RedisURLError(
                    f"redis.tls_cert_file {self.cert_file!r} / redis.tls_key_file "
                    f"{self.key_file!r}: {exc}"
                ) from exc
        return context

    def redis_py(self) -> dict[str, object]:
        """The same for redis-py's TLS connections."""
        return {
            "ssl_ca_certs": self.ca_file or None,
            "ssl_certfile": self.cert_file or None,
            "ssl_keyfile": self.key_file or None,
            "ssl_check_hostname": self.check_hostname,
            "ssl_cert_reqs": "required",
        }

    @property
    def given(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.key_file) or not self.check_hostname


DEFAULT_TLS = TLS()


@dataclass(frozen=True)
class RedisTarget:
    """Where a URL points: `kind` is "single", "sentinel" or "cluster"; `tls`, over TLS."""

    kind: str
    url: str
    tls: bool = False
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def parse_redis_url(url: str) -> RedisTarget:
    """The target of a redis.url setting; RedisURLError says what is wrong with it (showing
    the URL without its password)."""
    shown = redacted(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise RedisURLError(f"{shown!r} is not a URL (redis://host:port/db, see the docs)")
    tls = scheme in TLS_SCHEMES
    if scheme in PLAIN_SCHEMES:
        if "ssl_" in rest.partition("?")[2]:
            raise RedisURLError(
                f"{shown!r}: TLS files and checks are the redis.tls_* settings, not URL options"
            )
        return RedisTarget("single", url, tls)
    if scheme not in DEFAULT_PORTS:
        known = ", ".join(f"{s}://" for s in (*PLAIN_SCHEMES, *SENTINEL_SCHEMES, *CLUSTER_SCHEMES))
        raise RedisURLError(f"unknown scheme {scheme}:// (one of {known})")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    nodes = tuple(_host_port(item, DEFAULT_PORTS[scheme], shown) for item in hosts.split(","))
    options = {key: values[-1] for key, values in parse_qs(query).items()}
    parts = [unquote(part) for part in path.split("/") if part]
    if scheme in CLUSTER_SCHEMES:
        if parts or options:
            raise RedisURLError(
                f"{shown!r}: a cluster URL has no path or options (a cluster has database 0 only)"
            )
        return RedisTarget("cluster", url, tls, nodes, username=username, password=password)
    unknown = set(options) - {"sentinel_password"}
    if unknown:
        raise RedisURLError(f"{shown!r}: unknown option(s) {', '.join(sorted(unknown))}")
    if not 1 <= len(parts) <= 2:
        raise RedisURLError(f"{shown!r}: name the service after the hosts: .../mymaster[/db]")
    db = parts[1] if len(parts) == 2 else "0"
    if not db.isdigit():
        raise RedisURLError(f"{shown!r}: database {db!r} is not a number")
    return RedisTarget(
        "sentinel",
        url,
        tls,
        nodes,
        service=parts[0],
        db=int(db),
        username=username,
        password=password,
        sentinel_password=options.get("sentinel_password"),
    )


def redacted(url: str) -> str:
    """The URL with its passwords, if any, shown as ***."""
    url = re.sub(r"(sentinel_password=)[^&]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, _ = rest.partition("/")[0].rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{rest[len(userinfo) + 1 :]}"


def _host_port(item: str, default_port: int, shown: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    if not host:
        raise RedisURLError(f"{shown!r}: a host is missing")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisURLError(f"{shown!r}: {port!r} is not a port")
    return host, int(port)


class _Sentinel(Sentinel):
    """redis-py's Sentinel with a master discovery that concurrent calls cannot corrupt. The
    original moves the sentinel that answered to the front by swapping list positions it read
    before an await: two discoveries at once (every call during a failover) can leave one
    sentinel in the list twice and another not at all, never asked again nor closed."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        errors = []
        for sentinel in tuple(self.sentinels):
            try:
                masters = await sentinel.sentinel_masters()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                errors.append(f"{sentinel}: {exc!r}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                self.sentinels.remove(sentinel)  # no await from here: no other call interleaves
                self.sentinels.insert(0, sentinel)
                return state["ip"], state["port"]
        raise MasterNotFoundError(f"no master found for {service_name!r}: {'; '.join(errors)}")


class BoundedPool(ConnectionPool):
    """At most `max_connections`; a command that finds them all busy waits for one, in turn,
    up to `timeout`, then fails with ConnectionError. (redis-py's BlockingConnectionPool waits
    the same way but takes a Condition and a timer for every command, even when a connection is
    free: a tenth of a call's CPU. This one waits only when it has to.)"""

    def __init__(self, *, timeout: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.timeout = timeout
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        """Commands waiting for a free connection."""
        return len(self._waiters)

    async def get_connection(self, *args: object, **options: object):  # type: ignore[override]
        if self._waiters or not self.can_get_connection():
            await self._turn()
        connection = await super().get_connection()
        self._wake()  # another came free meanwhile: the next in line
        return connection

    async def release(self, connection) -> None:  # type: ignore[override]
        try:
            await super().release(connection)
        finally:
            self._wake()

    async def _turn(self) -> None:
        """Until this command is first in line and a connection is free."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    await waiter
                    if self.can_get_connection():
                        break
                    waiter = self._waiters[0] = loop.create_future()  # still first
        except BaseException as exc:
            self._waiters.remove(waiter)
            self._wake()  # what this one was woken for goes to the next in line
            if isinstance(exc, TimeoutError):
                raise RedisConnectionError("No connection available.") from None
            raise
        self._waiters.remove(waiter)

    def _wake(self) -> None:
        """The first in line, if a connection is free for it."""
        if self._waiters and self.can_get_connection():
            first = self._waiters[0]
            if not first.done():
                first.set_result(None)


class _QuickSend:
    """A command written to the socket at once when nothing is left to send before it.

    redis-py bounds every write by socket_timeout with asyncio.wait_for, which on Python 3.11
    makes a task per command (~10 us, a sixth of a command's CPU); a write that finds the
    socket's buffer empty has nothing to wait for (a command is far below the buffer's
    high-water mark). Otherwise, or when a health check is due, redis-py's own way."""

    async def send_packed_command(self, command, check_health: bool = True) -> None:
        writer = self._writer
        if (
            writer is None
            or writer.transport.get_write_buffer_size()
            or (check_health and self.health_check_interval)
        ):
            return await super().send_packed_command(command, check_health)
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        try:
            writer.writelines(command)
            await writer.drain()  # does not wait: only raises if the connection is gone
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {exc!r}") from exc
        except BaseException:
            await self.disconnect(nowait=True)
            raise


class _QuickConnection(_QuickSend, Connection):
    pass


class _QuickSentinelConnection(_QuickSend, SentinelManagedConnection):
    pass


class _QuickSentinelSSLConnection(_QuickSend, SentinelManagedSSLConnection):
    pass


class _BoundedSentinelPool(SentinelConnectionPool, BoundedPool):
    """The master's connections, found through Sentinel, bounded like a single server's."""


class SentinelManagedRedis(aioredis.Redis):
    """The master's client; closing it closes its connections to the sentinels too."""

    sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            with contextlib.suppress(RedisTimeoutError):  # see close()
                await super().aclose(close_connection_pool)
        finally:
            if self.sentinel is not None:
                await close(self.sentinel)


async def close(client: Client | Sentinel) -> None:
    """Close a client's connections. redis-py waits at most connect_timeout for each socket to
    finish closing and then raises, though the socket is closed: on a busy machine that is no
    error worth failing a shutdown for."""
    with contextlib.suppress(RedisTimeoutError):
        await client.aclose()


def redis_client(
    url: str,
    *,
    socket_timeout: float,
    connect_timeout: float,
    max_connections: int,
    tls: TLS = DEFAULT_TLS,
) -> Client:
    """A client for the URL (see the module's doc) that fails fast, with at most
    `max_connections` connections at once (per node of a Cluster); `tls` for a TLS scheme."""
    target = parse_redis_url(url)
    fail_fast = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [RedisConnectionError],
        "max_connections": max_connections,
    }
    secure = tls.redis_py() if target.tls else {}
    if target.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            username=target.username,
            password=target.password,
            ssl=target.tls,
            **secure,
            **(fail_fast | {"max_connections": max(max_connections, CLUSTER_MIN_CONNECTIONS)}),
        )
    if target.kind == "sentinel":
        sentinel = sentinels(
            target, socket_timeout=socket_timeout, connect_timeout=connect_timeout, tls=tls
        )
        client = sentinel.master_for(
            target.service,
            redis_class=SentinelManagedRedis,
            connection_pool_class=_BoundedSentinelPool,
            connection_class=(
                _QuickSentinelSSLConnection if target.tls else _QuickSentinelConnection
            ),
            timeout=socket_timeout,  # for a free connection
            db=target.db,
            username=target.username,
            password=target.password,
            **secure,
            **fail_fast,
        )
        client.sentinel = sentinel
        return client
    # (rediss:// gets redis-py's TLS connections from from_url, unix:// its Unix ones)
    quick = {"connection_class": _QuickConnection} if url.startswith("redis://") else {}
    pool = BoundedPool.from_url(url, timeout=socket_timeout, **fail_fast, **quick, **secure)
    return aioredis.Redis.from_pool(pool)


def sentinels(
    target: RedisTarget, *, socket_timeout: float, connect_timeout: float, tls: TLS = DEFAULT_TLS
) -> Sentinel:
    """The sentinels of a redis+sentinel:// target, that fail fast (over TLS for
    rediss+sentinel://)."""
    secure = {"ssl": True, **tls.redis_py()} if target.tls else {}
    return _Sentinel(
        list(target.nodes),
        sentinel_kwargs={
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "password": target.sentinel_password,
            # No retry: a sentinel that fails is passed over for the next one at once
            # (redis-py's default, ten tries with backoff, holds a call for seconds).
            "retry": Retry(NoBackoff(), 0),
            **secure,
        },
    )


async def learn_topology(client: Client) -> None:
    """A Cluster client fetches its slot map now, before concurrent calls share it: redis-py
    sends the commands that arrive while a client learns the map to an arbitrary node, gets
    MOVED, and after a few of those drops every connection, those of other calls too. If the
    cluster cannot be reached now, the first command tries again. Nothing to do otherwise."""
    if isinstance(client, RedisCluster):
        with contextlib.suppress(RedisError, OSError):
            await client.initialize()


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)


async def cluster_node_for(client: Client, key: str) -> ClusterNode | None:
    """On a Cluster, the node that holds `key` (to send it a keyless command such as WAIT);
    None for a single server or a Sentinel-watched master."""
    if isinstance(client, RedisCluster):
        await client.initialize()  # the slot map, if no command has fetched it yet
        return client.get_node_from_key(key)
    return None


def literal_glob(text: str) -> str:
    """`text` matched literally by a SCAN pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
