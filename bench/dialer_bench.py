"""Dialer processes against two Asterisk peers: throughput, and exactly once through a kill.

    python bench/dialer_bench.py            # 10,000 callees a phase, about 3 minutes
    python bench/dialer_bench.py --quick    # 2,000 callees a phase

Each phase is one campaign's callees queued in Redis and dialed by `zvonok-agi dialer`
processes (real processes, configured through the environment as in production) through two
fake Asterisk peers (tests/fake_ami.py, replaying the recorded Asterisk bytes, each in a
process of its own that logs every Originate it gets to a file):

  1 dialer            one dialer process, nothing killed: the reference
  3 dialers           three, nothing killed
  3 dialers, kill     three; once 30 % of the callees are done, one dialer and one peer are
                      killed with SIGKILL (the peer's calls in progress die with it)

After each phase: every callee's Originates, counted from the peers' logs, and the campaign's
state in Redis. A callee must be dialed once, or not at all and then settled with its attempt
recorded (a dialer killed between recording the attempt and sending the Originate: never
dialed again, settled as failed). Dialed twice, or left without an outcome, fails the run
(exit status 1). The table gives calls settled per second from the first Originate to the
last outcome, and the CPU each kind of process spent per call; then the ratio of each phase's
rate to one dialer's. Everything it starts (redis-server, peers, dialers) is stopped on exit,
on Ctrl-C and on SIGTERM, and dies with it if it is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from local_servers import (
    HOST,
    STOP_TIMEOUT,
    cpu_seconds,
    die_with_parent,
    machine_busy,
    start_fake_peer,
    start_redis,
    stop,
)
from zvonok_agi.app import redis_client
from zvonok_agi.config import load_settings
from zvonok_agi.inventory import load_inventory, parse_inventory
from zvonok_agi.logs import configure_logging
from zvonok_agi.outbound.queue import CampaignQueue
from zvonok_agi.routing.model import Outcome
from zvonok_agi.store.history import CallbackHistory
from zvonok_agi.store.routing_data import RoutingData

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CAMPAIGN = "spring-sale"
RESERVED = "74951234567"
KILL_AT = 0.3  # of the callees done
# What a peer answers, by the callee's last digit: 60 % answered (hangs up 2.4 s later, as
# recorded), 20 % busy, 10 % 480, 10 % rang out (10 s as recorded); times scaled by --scale.
CASE_BY_DIGIT = ("answered",) * 6 + ("busy", "busy", "480", "noanswer")


def inventory() -> dict[str, object]:
    return {
        "accounts": [{"id": "acme", "verified": True}],
        "campaigns": [
            {"id": CAMPAIGN, "account": "acme", "kind": "outbound", "caller_id": RESERVED}
        ],
        "numbers": [{"did": RESERVED, "pool": "reservable", "owner": "acme"}],
    }


def callees(n: int) -> list[str]:
    return [f"7916{i:07d}" for i in range(n)]


# --- processes ---------------------------------------------------------------------------------


def start_peer(log: Path, scale: float) -> tuple[subprocess.Popen[str], int]:
    return start_fake_peer(",".join(CASE_BY_DIGIT), "--scale", str(scale), "--log", str(log))


def start_dialer(env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("ab") as errors:
        return subprocess.Popen(
            [sys.executable, "-m", "zvonok_agi", "dialer"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            preexec_fn=die_with_parent,  # noqa: PLW1509 (no threads yet)
        )


def dialer_env(redis_url: str, prefix: str, ports: list[int], concurrency: int) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ZVONOK_REDIS_URL": redis_url,
        "ZVONOK_REDIS_KEY_PREFIX": prefix,
        "ZVONOK_AMI_USERNAME": "lab",
        "ZVONOK_AMI_SECRET": "labsecret",
        "ZVONOK_DIALER_HOSTS": ",".join(f"{HOST}:{port}" for port in ports),
        "ZVONOK_DIALER_HOST_CAPACITY": str(concurrency),
        "ZVONOK_DIALER_TRUNK_CAPACITY": str(2 * concurrency),
        "ZVONOK_DIALER_CONCURRENCY": str(concurrency),
        "ZVONOK_DIALER_HEARTBEAT": "1.0",
        "ZVONOK_DIALER_CLAIM_AFTER": "3.0",
        "ZVONOK_OUTBOUND_TRUNK_CALLS_PER_SECOND": "100000",
        # A peer that dies takes its calls' events along: they settle after these.
        "ZVONOK_OUTBOUND_RING_TIMEOUT": "2",
        "ZVONOK_OUTBOUND_OUTCOME_TIMEOUT": "4",
        "ZVONOK_LOG_FORMAT": "json",
        "ZVONOK_LOG_LEVEL": "warning",
    }


# --- one phase ---------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    dialers: int
    kill: bool


@dataclass
class Result:
    phase: Phase
    callees: int
    once: int = 0  # dialed exactly once
    unsent: int = 0  # recorded, never sent (a dialer killed in between), settled
    twice: list[str] = field(default_factory=list)
    unsettled: int = 0  # without an outcome at the end
    outcomes: dict[Outcome, int] = field(default_factory=dict)
    seconds: float = 0.0  # first Originate to the last outcome
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by kind of process
    others: float = 0.0  # cores busy with other work meanwhile

    @property
    def rate(self) -> float:
        return self.callees / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return not self.twice and not self.unsettled and self.once + self.unsent == self.callees


async def run_phase(
    phase: Phase, args: argparse.Namespace, redis_url: str, redis_pid: int, tmp: Path
) -> Result:
    prefix = f"dbench{phase.dialers}{'k' if phase.kill else ''}:"
    settings = load_settings(environ={})
    client = redis_client(redis_url, settings)
    numbers = callees(args.callees)
    result = Result(phase, len(numbers))
    peers: list[subprocess.Popen[str]] = []
    dialers: list[subprocess.Popen[str]] = []
    logs = [tmp / f"{prefix}peer{i}.log" for i in range(2)]
    try:
        now = time.time()
        history = CallbackHistory(client, prefix, settings.routing.callback_window)
        data = RoutingData(client, prefix)
        await load_inventory(parse_inventory(inventory(), now), data, history, now)
        queue = CampaignQueue(client, prefix)
        await queue.configure(CAMPAIGN, cps=args.cps, concurrency=3 * args.concurrency)

        ports = []
        for log in logs:
            peer, port = start_peer(log, args.scale)
            peers.append(peer)
            ports.append(port)
        env = dialer_env(redis_url, prefix, ports, args.concurrency)
        dialers = [start_dialer(env, tmp / f"{prefix}dialer{i}.log") for i in range(phase.dialers)]
        await logged_in(logs, phase.dialers)
        # From here on: what the calls cost, not what starting the processes did.
        before = Usage.now(peers, dialers, redis_pid)
        await queue.enqueue(CAMPAIGN, numbers)
        killed: list[subprocess.Popen[str]] = []
        cpu_at_kill: dict[str, float] = {}
        deadline = time.monotonic() + args.timeout
        while not (progress := await queue.progress(CAMPAIGN)).finished:
            if time.monotonic() > deadline:
                print(f"{phase.name}: not finished in {args.timeout:g} s", file=sys.stderr)
                break
            if phase.kill and not killed and progress.done >= KILL_AT * len(numbers):
                killed = [dialers[0], peers[1]]
                cpu_at_kill = {
                    "dialers": cpu_seconds(dialers[0].pid),
                    "peers": cpu_seconds(peers[1].pid),
                }
                for proc in killed:
                    proc.send_signal(signal.SIGKILL)
            await asyncio.sleep(0.05)
        finished = time.time()
        after = Usage.now(peers, dialers, redis_pid)
        result.cpu = after.minus(before, killed_cpu=cpu_at_kill)
        result.others = after.others_since(before, killed_cpu=cpu_at_kill)
        for proc in dialers + peers:
            stop(proc)

        dialed: Counter[str] = Counter()
        first = finished
        for log in logs:
            for line in log.read_text().splitlines():
                at, callee, _ = line.split()
                dialed[callee] += 1
                first = min(first, float(at))
        result.seconds = finished - first
        result.outcomes = progress.outcomes
        result.unsettled = progress.waiting + progress.dialing
        result.twice = sorted(c for c, n in dialed.items() if n > 1)
        result.once = sum(1 for n in dialed.values() if n == 1)
        for callee in numbers:
            if callee not in dialed and await history.dialed(CAMPAIGN, callee) is not None:
                result.unsent += 1
    finally:
        for proc in dialers + peers:
            stop(proc)
        await client.aclose()
    return result


@dataclass(frozen=True)
class Usage:
    """CPU seconds so far: of the dialers, the peers, redis-server, this benchmark, and every
    process on the machine."""

    dialers: float
    peers: float
    redis: float
    bench: float
    machine: float
    at: float

    @classmethod
    def now(cls, peers: list, dialers: list, redis_pid: int) -> Usage:
        return cls(
            dialers=sum(cpu_seconds(p.pid) for p in dialers),
            peers=sum(cpu_seconds(p.pid) for p in peers),
            redis=cpu_seconds(redis_pid),
            bench=time.process_time(),
            machine=machine_busy(),
            at=time.monotonic(),
        )

    def minus(self, before: Usage, *, killed_cpu: dict[str, float]) -> dict[str, float]:
        # A killed process's CPU up to the kill counts (it is gone from /proc after).
        return {
            "dialers": self.dialers - before.dialers + killed_cpu.get("dialers", 0.0),
            "peers": self.peers - before.peers + killed_cpu.get("peers", 0.0),
            "redis": self.redis - before.redis,
        }

    def others_since(self, before: Usage, *, killed_cpu: dict[str, float]) -> float:
        """Cores busy with anything else meanwhile (not ~0: the figures are noisy)."""
        ours = sum(self.minus(before, killed_cpu=killed_cpu).values()) + self.bench - before.bench
        wall = self.at - before.at
        return max(0.0, (self.machine - before.machine - ours) / wall) if wall > 0 else 0.0


# --- the table ---------------------------------------------------------------------------------


async def logged_in(logs: list[Path], dialers: int, timeout: float = 60.0) -> None:
    """Until every dialer has logged in to every peer."""
    async with asyncio.timeout(timeout):
        while True:
            logins = [Path(f"{log}.logins") for log in logs]
            counts = [len(p.read_bytes().splitlines()) if p.exists() else 0 for p in logins]
            if min(counts) >= dialers:
                return
            await asyncio.sleep(0.1)


def print_table(results: list[Result]) -> None:
    head = [
        "phase",
        "callees",
        "once",
        "unsent",
        "twice",
        "failed",
        "s",
        "calls/s",
        "dialers",
        "peers",
        "redis",
        "others",
    ]
    rows = [head]
    for r in results:
        per_call = {kind: f"{cpu * 1000 / r.callees:.2f}" for kind, cpu in r.cpu.items()}
        rows.append(
            [
                r.phase.name,
                str(r.callees),
                str(r.once),
                str(r.unsent),
                str(len(r.twice)),
                str(r.outcomes.get(Outcome.FAILED, 0)),
                f"{r.seconds:.1f}",
                f"{r.rate:.0f}",
                per_call["dialers"],
                per_call["peers"],
                per_call["redis"],
                f"{r.others:.2f}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for k, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callees", type=int, default=10_000, help="per phase")
    parser.add_argument("--cps", type=float, default=2000.0, help="the campaign's calls/s")
    parser.add_argument("--concurrency", type=int, default=150, help="calls at once a dialer")
    parser.add_argument("--scale", type=float, default=0.05, help="recorded call times x this")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a phase may take")
    parser.add_argument("--quick", action="store_true", help="2,000 callees a phase")
    args = parser.parse_args(argv)
    if args.quick:
        args.callees = 2000
    if min(args.callees, args.concurrency) < 1 or args.cps <= 0 or args.scale < 0:
        parser.error("counts and rates must be positive")
    return args


PHASES = (
    Phase("1 dialer", 1, kill=False),
    Phase("3 dialers", 3, kill=False),
    Phase("3 dialers, kill", 3, kill=True),
)


async def amain(args: argparse.Namespace, redis_url: str, redis_pid: int, tmp: Path) -> int:
    load = os.getloadavg()
    results = []
    for phase in PHASES:
        results.append(await run_phase(phase, args, redis_url, redis_pid, tmp))
    print(
        f"dialer benchmark: {args.callees} callees a phase, 2 fake Asterisk peers, call times "
        f"x{args.scale:g}, {os.cpu_count()} CPUs; load average {load[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after\n"
    )
    print_table(results)
    reference = results[0].rate
    print()
    for r in results[1:]:
        print(f"{r.phase.name} / 1 dialer: throughput x{r.rate / reference:.2f}")
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(
            f"ERROR {r.phase.name}: {len(r.twice)} dialed twice {r.twice[:5]}, "
            f"{r.unsettled} without an outcome, {r.once} once + {r.unsent} unsent "
            f"of {r.callees}"
        )
    if not failed:
        print("every callee of every phase dialed exactly once, or recorded and never sent")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("console", "warning")
    signal.signal(signal.SIGTERM, _terminate)
    with tempfile.TemporaryDirectory(prefix="zvonok-dbench-") as name:
        tmp = Path(name)
        redis = None
        try:
            redis = start_redis(tmp / "redis", aof=False)
            redis_pid = redis._process.pid if redis._process else 0
            return asyncio.run(amain(args, redis.url, redis_pid, tmp))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            if redis is not None:
                redis.stop(timeout=STOP_TIMEOUT)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
