"""The control plane's store on SQLite and on PostgreSQL: what a change costs, how many go through
when several admin processes write at once, how fast the publisher catches up, how fast an
import writes and how much room the records take.

    python bench/store_bench.py              # both stores; 1, 4 and 16 writers x 10 s (~3 min)
    python bench/store_bench.py --quick      # 1 and 4 writers x 3 s, 10,000 numbers
    python bench/store_bench.py --postgres postgresql://user@host/db   # a server of yours

It starts its own redis-server and, unless given a server, a private PostgreSQL cluster
(Debian's postgresql package, as the tests start it, commits synced to the disk as SQLite's
are), on free loopback ports in a temp dir; on a given server it works in schemas of its own
and drops them at the end. For each store:

  1. changes: N writer processes (N admin processes) each change their own reserved number in
     a loop for --duration s (the Change window: a new callback rule), every change committed,
     then published to Redis before the next: changes/s in all, and per change the commit (the
     transaction: writers run one at a time) and the publish (from the commit until Redis
     holds it, the publisher's lag, waiting for the lock while another process publishes)
     p50/p99 in ms;
  2. import: an inventory of --numbers numbers (bench/inventory_gen.py: 10 numbers per
     account, 2 campaigns each) through the service's import (what `zvonok-agi load` runs),
     published batch by batch: numbers/s;
  3. backlog: the same import into another fresh store while Redis is away (committed only),
     then one publish of the whole outbox: outbox rows per second (the publisher catching up),
     and the store's size per 100,000 numbers.

Goals (PASS/FAIL at the end, exit status 1 on a FAIL): a change reaches Redis within 100 ms of
its commit at p99 (issue 10's change-to-engine budget; the engine's part comes on top), and an
import writes >= 20,000 numbers/s (issue 10's loader goal), on each store.

The machine's load average is printed with every figure: on a busy machine the times are the
machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis

from inventory_gen import write as write_inventory
from local_servers import free_port, start_redis
from zvonok_agi.numbers.importer import read_file
from zvonok_agi.numbers.service import NumbersService
from zvonok_agi.numbers.store import Store
from zvonok_agi.store.routing_data import RoutingData

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' private PostgreSQL cluster
from postgres_server import PostgresServer, binaries, sql  # noqa: E402

RULES = ("force_yes", "as_campaign", "force_no")
GOAL_PUBLISH_P99_MS = 100.0
GOAL_IMPORT = 20_000  # numbers/s


def account(w: int) -> str:
    return f"bench-{w}"


def did(w: int) -> str:
    return f"7495777{w:04d}"


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def ms(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# one writer (a process of its own)


async def writer(url: str, redis_url: str, prefix: str, w: int, seconds: float):
    """Says "ready" once its store is open, waits for "go", then changes its number for
    `seconds`; prints [commit, publish] seconds per change."""
    redis = aioredis.Redis.from_url(redis_url, socket_timeout=10)
    async with await Store.open(url) as store:
        service = NumbersService(store, RoutingData(redis, prefix))
        publish, committed = service._published, [0.0]

        async def timed_publish() -> None:  # runs right after the commit
            committed[0] = time.perf_counter()
            await publish()

        service._published = timed_publish
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        timings, k, end = [], 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            began = time.perf_counter()
            await service.set_rule("bench", did(w), RULES[k % len(RULES)])
            timings.append([committed[0] - began, time.perf_counter() - committed[0]])
            k += 1
    await redis.aclose()
    print(json.dumps(timings))


# the phases


async def prepare(url: str, writers: int) -> None:
    async with await Store.open(url) as store:
        service = NumbersService(store, None)
        for w in range(writers):
            await service.create_account("bench", account(w), verified=True)
            await service.add_number("bench", did(w))
            await service.reserve("bench", account(w), did(w))


def changes(url: str, redis_url: str, writers: int, seconds: float) -> tuple[str, float]:
    prefix = f"b{uuid.uuid4().hex[:6]}:"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")])}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--writer",
                url,
                redis_url,
                prefix,
                str(w),
                str(seconds),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for w in range(writers)
    ]
    for proc in procs:  # all ready (a loaded machine starts them slowly), then all go at once
        while (line := proc.stdout.readline()).strip() != "ready":  # past any log line
            if not line:
                raise RuntimeError("a writer did not start")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    timings = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"a writer failed ({proc.returncode})")
        timings += json.loads(out.strip().splitlines()[-1])
    if not timings:
        raise RuntimeError(f"{writers} writers made no change in {seconds:g} s")
    commit = [c for c, _ in timings]
    publish = [p for _, p in timings]
    line = (
        f"{writers:>3} writers  {len(timings) / seconds:8.0f} changes/s   commit p50 "
        f"{ms(commit, 0.5):6.1f} p99 {ms(commit, 0.99):6.1f}   publish p50 "
        f"{ms(publish, 0.5):6.1f} p99 {ms(publish, 0.99):6.1f} ms   ({load()})"
    )
    return line, ms(publish, 0.99)


async def imports(
    url: str, redis_url: str, path: Path, numbers: int, publish: bool
) -> tuple[list[str], float]:
    """Imports the inventory: published batch by batch (`zvonok-agi load`), or with Redis
    away, then the outbox's backlog published at once (the publisher catching up). The lines
    to print, and the import's numbers/s."""
    inventory, overrides = read_file(path)
    redis = aioredis.Redis.from_url(redis_url, socket_timeout=10)
    data = RoutingData(redis, f"i{uuid.uuid4().hex[:6]}:")
    lines = []
    async with await Store.open(url) as store:
        service = NumbersService(store, data if publish else None)
        began = time.perf_counter()
        await service.import_inventory("bench", inventory, overrides)
        seconds = seconds_imported = time.perf_counter() - began
        how = "published batch by batch" if publish else "Redis away: committed only"
        lines.append(
            f"import      {numbers:,} numbers in {seconds:.1f} s: "
            f"{numbers / seconds:,.0f} numbers/s ({how})   ({load()})"
        )
        if not publish:
            began = time.perf_counter()
            rows = await NumbersService(store, data).publisher.publish()
            seconds = time.perf_counter() - began
            lines.append(
                f"backlog     {rows:,} outbox rows published in {seconds:.1f} s: "
                f"{rows / seconds:,.0f} rows/s   ({load()})"
            )
            per = await store_size(store) * 100_000 / numbers / 2**20
            lines.append(
                f"size        {per:.1f} MB per 100,000 numbers (with their accounts, "
                "campaigns and audit)"
            )
    await redis.aclose()
    return lines, numbers / seconds_imported


async def store_size(store: Store) -> int:
    async with store.reading() as q:
        if store.database.name == "sqlite":
            [[pages]] = await q.db.fetch("PRAGMA page_count")
            [[page]] = await q.db.fetch("PRAGMA page_size")
            return pages * page
        [[size]] = await q.db.fetch(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        )
        return int(size)


class Stores:
    """Fresh stores of one kind: SQLite files in the temp dir, or schemas on a server."""

    def __init__(self, tmp: Path, server: str | None) -> None:
        self.tmp = tmp
        self.server = server
        self.schemas: list[str] = []

    def fresh(self) -> str:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        if self.server is None:
            return f"sqlite:///{self.tmp / name}.db"
        asyncio.run(sql(self.server, f"CREATE SCHEMA {name}"))
        self.schemas.append(name)
        return f"{self.server}?search_path={name}"

    def drop(self) -> None:
        for name in self.schemas:
            asyncio.run(sql(self.server, f"DROP SCHEMA {name} CASCADE"))


def run_store(name: str, stores: Stores, redis_url: str, args, inventory: Path) -> list[str]:
    """Runs the phases on one kind of store; the goals' verdicts."""
    print(f"\n{name}")
    url = stores.fresh()
    asyncio.run(prepare(url, max(args.writers)))
    worst_publish = 0.0
    for n in args.writers:
        line, publish_p99 = changes(url, redis_url, n, args.duration)
        worst_publish = max(worst_publish, publish_p99)
        print("  " + line, flush=True)
    rates = []
    for publish in (True, False):
        lines, rate = asyncio.run(
            imports(stores.fresh(), redis_url, inventory, args.numbers, publish)
        )
        rates.append(rate)
        for line in lines:
            print("  " + line, flush=True)
    kind = name.split()[0]
    return [
        verdict(
            f"{kind}: change to Redis p99 <= {GOAL_PUBLISH_P99_MS:g} ms (worst: "
            f"{worst_publish:.1f} ms)",
            worst_publish <= GOAL_PUBLISH_P99_MS,
        ),
        verdict(
            f"{kind}: import >= {GOAL_IMPORT:,} numbers/s (published batch by batch: "
            f"{rates[0]:,.0f})",
            rates[0] >= GOAL_IMPORT,
        ),
    ]


def verdict(goal: str, passed: bool) -> str:
    return f"{'PASS' if passed else 'FAIL'}  {goal}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--postgres", help="a PostgreSQL server's URL (default: start one)")
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--writers", default="1,4,16")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--numbers", type=int, default=50_000)
    args = parser.parse_args(argv)
    if args.quick:
        args.writers, args.duration, args.numbers = "1,4", 3.0, 10_000
    args.writers = [int(n) for n in args.writers.split(",")]
    print(
        f"store_bench: writers {args.writers} x {args.duration:g} s, import "
        f"{args.numbers:,} numbers; {os.cpu_count()} cores, {load()}"
    )
    with (
        tempfile.TemporaryDirectory(prefix="store-bench-") as folder,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(folder)
        redis = start_redis(tmp / "redis", aof=False)
        stack.callback(redis.stop)
        inventory = tmp / "inventory.jsonl"
        write_inventory(inventory, args.numbers, max(1, args.numbers // 10))
        verdicts = []
        if args.only != "postgresql":
            verdicts += run_store(
                "SQLite (WAL, one file)", Stores(tmp, None), redis.url, args, inventory
            )
        if args.only != "sqlite":
            server = args.postgres
            if server is None:
                bin_dir = binaries()
                if bin_dir is None:
                    print("\nPostgreSQL: not installed (apt-get install postgresql), skipped")
                    return report(verdicts)
                cluster = PostgresServer(bin_dir, free_port(), durable=True)
                cluster.start()
                stack.callback(cluster.stop)
                server = cluster.url
            stores = Stores(tmp, server)
            stack.callback(stores.drop)
            verdicts += run_store(
                "PostgreSQL (a server on this machine, over TCP)",
                stores,
                redis.url,
                args,
                inventory,
            )
    return report(verdicts)


def report(verdicts: list[str]) -> int:
    print(f"\ngoals ({load()})")
    for line in verdicts:
        print("  " + line)
    return 1 if any(line.startswith("FAIL") for line in verdicts) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--writer"]:
        url, redis_url, prefix, w, seconds = sys.argv[2:]
        asyncio.run(writer(url, redis_url, prefix, int(w), float(seconds)))
    else:
        sys.exit(main())
