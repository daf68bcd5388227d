"""What a change costs the admin process: its CPU, SQL statements and Redis round trips per change.

    python bench/admin_bench.py               # 500,000 numbers; 3 rounds of 1,000 changes at 50/s
    python bench/admin_bench.py --numbers 20000 --accounts 2000 --changes 300
    python bench/admin_bench.py --compare ../other-checkout    # A/B: rounds alternate the trees
    python bench/admin_bench.py --profile admin.prof            # cProfile of the first round

The changes of scale_bench.py without the calls: it writes the inventory (bench/inventory_gen.py),
imports it with `zvonok-agi load` into a fresh SQLite file, starts its own redis-server, then runs
`zvonok-agi admin` under bench/admin_probe.py and sends it --changes changes at --rate per second
(open loop), each to a reserved number of its own: PATCH /api/numbers/{did}, unbind it and set a
callback rule, as the scale benchmark does. The admin server answers once Redis holds the change
(it publishes the outbox before it answers), so the answer's latency is the change-to-Redis
latency. Each round starts a new admin process, warms it up with --warmup changes, then counts.

Per change, figures that do not depend on the machine's load: the admin process's CPU (utime +
stime from /proc), of it the event loop's thread and aiosqlite's, the SQL statements SQLite ran
and the trips to aiosqlite's thread, the commands sent to Redis (each a round trip; all three
counted by bench/admin_probe.py), what Redis ran for them (INFO commandstats: a script's own
commands too) and Redis's CPU; and the answer's p50/p99 (a wall time: the
machine's load average is printed with it). With --compare, rounds alternate between this
checkout and the other one (A, B, A, B...), on the same store and Redis: paired figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis as redis_sync

from fastagi_bench import spawn, stop, stop_all, tail, wait_listening
from inventory_gen import bound_numbers
from inventory_gen import write as write_inventory
from local_servers import HOST, cpu_seconds, free_port, start_redis
from scale_bench import commands_env

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
KEY_PREFIX = "admin:"
TOKEN = "admin-bench-token"
CPU_GOAL_MS = 2.0  # the admin process's CPU per change
SNAPSHOT_TIMEOUT = 10.0


@dataclass
class Round:
    tree: str  # "A" (this checkout) or "B" (--compare)
    changes: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, request to answer
    cpu: float = 0.0  # the admin process, seconds
    threads: dict[str, float] = field(default_factory=dict)
    statements: int = 0
    trips: int = 0
    round_trips: int = 0  # to Redis
    redis_calls: dict[str, int] = field(default_factory=dict)
    redis_cpu: float = 0.0

    def per_change(self, value: float) -> float:
        return value / max(1, self.changes)


def ms(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


async def change(http: aiohttp.ClientSession, url: str, rule: str, into: Round) -> None:
    body = {"inbound_campaign": None, "callback_rule": rule}
    sent = time.monotonic()
    try:
        async with http.patch(url, json=body) as reply:
            if reply.status != 200:
                into.errors.append(f"HTTP {reply.status}: {(await reply.text())[:120]}")
                return
            await reply.read()
    except aiohttp.ClientError as exc:
        into.errors.append(type(exc).__name__)
        return
    into.latencies.append(time.monotonic() - sent)


async def send(admin: str, dids: list[str], rate: float, rng: random.Random, into: Round) -> None:
    """One change per number of `dids`, `rate` a second (open loop), all answered."""
    loop = asyncio.get_running_loop()
    rules = ["force_yes", "force_no", "as_campaign"]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        tasks = []
        t0 = loop.time()
        for i, did in enumerate(dids):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            url = f"{admin}/api/numbers/{did}"
            tasks.append(asyncio.create_task(change(http, url, rng.choice(rules), into)))
        await asyncio.gather(*tasks)


async def snapshot(pid: int, path: Path, seq: int) -> dict:
    """The probe's counts (bench/admin_probe.py), its `seq`-th snapshot."""
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + SNAPSHOT_TIMEOUT
    while time.monotonic() < deadline:
        try:
            document = json.loads(path.read_text())
            if document["seq"] == seq:
                return document
        except (OSError, ValueError):
            pass
        await asyncio.sleep(0.01)
    raise RuntimeError("the admin probe wrote no snapshot")


def command_calls(client: redis_sync.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): s["calls"] for name, s in stats.items()}


async def one_round(
    args: argparse.Namespace,
    tmp: Path,
    env: dict[str, str],
    redis,
    tree: str,
    root: Path,
    dids: list[str],
    rng: random.Random,
    profile: str | None,
) -> Round:
    port = free_port()
    probe_file = tmp / f"probe-{port}.json"
    log = tmp / f"admin-{port}.log"
    argv = [sys.executable, str(BENCH / "admin_probe.py"), str(probe_file)]
    if profile:
        argv += ["--profile", profile]
    settings = {"ZVONOK_ADMIN_PORT": str(port), "ZVONOK_ADMIN_TOKEN": TOKEN}
    pythonpath = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    admin = spawn([*argv, "admin"], {**env, **settings, "PYTHONPATH": pythonpath}, log)
    try:
        await wait_listening(admin, port, log)
        url = f"http://{HOST}:{port}"
        warm, counted = dids[: args.warmup], dids[args.warmup :]
        await send(url, warm, args.rate, rng, Round(tree))
        client = redis_sync.Redis.from_url(redis.url)
        result = Round(tree, changes=len(counted))
        before = await snapshot(admin.pid, probe_file, 1)
        cpu, redis_cpu = cpu_seconds(admin.pid), cpu_seconds(redis._process.pid)
        calls = command_calls(client)
        await send(url, counted, args.rate, rng, result)
        after = await snapshot(admin.pid, probe_file, 2)
        result.cpu = cpu_seconds(admin.pid) - cpu
        result.redis_cpu = cpu_seconds(redis._process.pid) - redis_cpu
        result.redis_calls = {
            name: n - calls.get(name, 0)
            for name, n in command_calls(client).items()
            if name != "info" and n > calls.get(name, 0)
        }
        client.close()
        result.statements = after["statements"] - before["statements"]
        result.trips = after["trips"] - before["trips"]
        result.round_trips = after["redis"] - before["redis"]
        result.threads = {
            name: cpu - before["threads"].get(name, 0.0) for name, cpu in after["threads"].items()
        }
        return result
    except RuntimeError:
        print(tail(log), file=sys.stderr)
        raise
    finally:
        stop(admin)


def describe(r: Round) -> str:
    per = r.per_change
    threads = ", ".join(
        f"{name} {per(cpu) * 1000:.2f}" for name, cpu in sorted(r.threads.items()) if cpu > 0
    )
    redis = ", ".join(f"{name} {per(n):.2f}" for name, n in sorted(r.redis_calls.items()))
    return (
        f"  {r.tree}: admin CPU {per(r.cpu) * 1000:.2f} ms a change (threads: {threads}); "
        f"SQL {per(r.statements):.1f} statements, {per(r.trips):.1f} trips to aiosqlite; "
        f"Redis {per(r.round_trips):.2f} round trips, running {redis}; "
        f"CPU {per(r.redis_cpu) * 1000:.2f} ms; answered p50 {ms(r.latencies, 0.5):.1f} / "
        f"p99 {ms(r.latencies, 0.99):.1f} ms"
        + (f"; {len(r.errors)} errors, first: {r.errors[0]}" if r.errors else "")
    )


async def amain(args: argparse.Namespace, tmp: Path) -> int:
    rng = random.Random(7)
    inventory = tmp / "inventory.jsonl"
    print(f"writing and loading {args.numbers:,} numbers ...", file=sys.stderr)
    write_inventory(inventory, args.numbers, args.accounts)
    redis = start_redis(tmp / "redis", aof=False)
    try:
        env = commands_env(redis.url, KEY_PREFIX, tmp / "zvonok.db")
        load = spawn(
            [sys.executable, "-m", "zvonok_agi", "load", str(inventory)], env, tmp / "load.log"
        )
        if await asyncio.to_thread(load.wait) != 0:
            raise RuntimeError(f"zvonok-agi load failed:\n{tail(tmp / 'load.log')}")
        stop(load)
        bound = [did for did, _ in bound_numbers(args.numbers, args.accounts)]
        rng.shuffle(bound)
        trees = [("A", ROOT)] + ([("B", Path(args.compare).resolve())] if args.compare else [])
        per_round = args.warmup + args.changes
        if per_round * args.rounds * len(trees) > len(bound):
            raise SystemExit("more changes than reserved numbers: fewer rounds or changes")
        rounds: list[Round] = []
        for i in range(args.rounds):
            for tree, root in trees:
                dids, bound = bound[:per_round], bound[per_round:]
                profile = args.profile if i == 0 and tree == "A" else None
                print(f"round {i + 1}, {tree} ...", file=sys.stderr)
                r = await one_round(args, tmp, env, redis, tree, root, dids, rng, profile)
                print(describe(r))
                rounds.append(r)
    finally:
        stop_all()
        redis.stop()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    failed = False
    for tree, root in trees:
        mine = [r for r in rounds if r.tree == tree]
        cpu = statistics.median(r.per_change(r.cpu) * 1000 for r in mine)
        errors = sum(len(r.errors) for r in mine)
        print(
            f"{tree} ({root}): median admin CPU {cpu:.2f} ms a change over {len(mine)} rounds"
            + (f", {errors} errors" if errors else "")
        )
        if tree == "A":
            passed = cpu <= CPU_GOAL_MS and not errors
            failed = not passed
            print(f"{'PASS' if passed else 'FAIL'}  admin CPU <= {CPU_GOAL_MS:g} ms a change")
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--numbers", type=int, default=500_000)
    p.add_argument("--accounts", type=int, default=50_000, help="two campaigns each")
    p.add_argument("--changes", type=int, default=1000, help="counted changes per round")
    p.add_argument("--warmup", type=int, default=100, help="changes before the count")
    p.add_argument("--rate", type=float, default=50.0, help="changes per second")
    p.add_argument("--rounds", type=int, default=3, help="per checkout")
    p.add_argument("--compare", help="another checkout of zvonok-agi: rounds alternate with it")
    p.add_argument("--profile", help="write a cProfile of the first round's event loop here")
    args = p.parse_args(argv)
    if args.numbers < 100 or args.accounts < 10 or args.rate <= 0 or args.changes <= 0:
        p.error("at least 100 numbers and 10 accounts; a positive rate and count")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"machine: {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory(prefix="zvonok-admin-") as tmp:
        return asyncio.run(amain(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
