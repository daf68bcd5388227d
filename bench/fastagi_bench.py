"""FastAGI load benchmark: the engine against the floor and against process-per-call AGI.

One command, one table:

    python bench/fastagi_bench.py            # ~50 s: 10 s per target after 1 s warm-up
    python bench/fastagi_bench.py --quick    # ~12 s: 2 s per target (smoke test)

Targets, each in a process of its own (the load generator never shares an event loop with a
server):

  engine       `python -m zvonok_agi serve` on a real redis-server that this script starts
               (free port, temp dir), loaded with 100 reserved numbers, campaigns and a call
               history; log level info, as in production: one JSON line per call, to a file
  engine-nolog the same at log level warning (no line per call)
  floor        bench/floor_server.py: the same protocol exchange, no store, no logic
  process-per-call
               bench/agi_script.py started as a new Python process per call, AGI over
               stdin/stdout, the way `AGI(script.py)` runs it

Two more modes, each against one engine process:

  --idle-flood [N]  N (1,000) idle connections from the calls' own host, each reconnecting as
               soon as the engine closes it (bench/idle_flood.py, a process of its own), while
               calls arrive at --flood-rate (20/s): a baseline phase without the flood, then
               the same with it; calls routed, p50/p99 and the engine's log volume per phase
  --burst [N]  N (1000) calls started at the same instant, against listen backlogs of 100
               (asyncio's default) and the engine's default

`--instructions` counts, instead of timing, each server's user-space instructions per call
under valgrind's callgrind (steady on a shared machine, where CPU time is not).

The generator is open-loop: sessions start on a fixed schedule whether or not earlier ones
have finished, and a session's latency runs from its SCHEDULED start to the server's close
(for process-per-call: to the script's exit), so queueing shows. `--event-loop uvloop` runs the
engine and the floor on uvloop. It plays Asterisk's side with the sans-IO
`AsteriskConnection`: the recorded env block with this call's DID and caller, a reply to each
command as Asterisk gives it, until the server closes. Engine calls are a mix of first
callbacks (outbound, claimed), second callbacks and callers never dialed (both inbound); every
route is checked, a wrong one counts as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from local_servers import (
    HOST,
    cpu_seconds,
    die_with_parent,
    free_port,
    machine_busy,
    start_redis,
)
from local_servers import stop as stop_process  # this module's `stop` also forgets the child
from zvonok_agi.agi.client import FakeChannel, recorded_environment
from zvonok_agi.agi.inbound import InboundRouter
from zvonok_agi.agi.protocol import NEED_DATA, AsteriskConnection, Closed, Command
from zvonok_agi.app import redis_client
from zvonok_agi.config import load_settings
from zvonok_agi.inventory import load_inventory, parse_inventory
from zvonok_agi.logs import configure_logging
from zvonok_agi.routing.model import Attempt, Decision, Outcome, Route
from zvonok_agi.store.embedded import EmbeddedRedis
from zvonok_agi.store.history import CallbackHistory
from zvonok_agi.store.routing_data import RoutingData

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

KEY_PREFIX = "bench:"
SESSION_TIMEOUT = 5.0  # per session, from its scheduled start (the engine's deadline is 3 s)
START_TIMEOUT = 15.0  # a server process must listen within this
STOP_TIMEOUT = 8.0  # SIGTERM, then SIGKILL after this
MIX = (("first", 0.4), ("second", 0.3), ("never", 0.3))  # engine call mix
ACCOUNTS, NUMBERS_PER_ACCOUNT = 5, 20  # 100 reserved numbers
SECOND_PAIRS = 400  # (DID, caller) pairs whose first callback was already routed
DAY = 86400.0
# Issue 11's goals for the engine at 500 calls/s (its log line kept), against the floor.
GOAL_CPU_MS = 0.5  # the engine process's CPU per call
GOAL_CPU_RATIO = 1.3  # ... against the floor's, in the same run
GOAL_P99_MS = 5.0
GOAL_TOP_SHARE = 0.5  # the engine's top rate against the floor's


# --- what the engine sends: the floor and the AGI script send the same ------------------------


def engine_commands() -> list[tuple[str, ...]]:
    """The engine's commands for a typical first callback (verbs, count, sizes)."""
    dialplan = load_settings(environ={}).dialplan
    router = InboundRouter(None, None, dialplan, 7 * DAY)  # type: ignore[arg-type]
    decision = Decision(
        Route.outbound("acct-0-sale", uuid.UUID(int=0).hex),
        "first callback to outbound campaign acct-0-sale",
    )
    return router.commands(decision, "74951000000", "79160000000")


# --- inventory and call plans ------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    did: str
    caller: str  # as the carrier sends it in agi_callerid
    expect: str | None  # ZV_ROUTE the engine must set (None: not checked)


def did_of(n: int) -> str:
    return f"7495100{n:04d}"


def carrier_format(rng: random.Random, e164: str) -> str:
    """Carriers send 7XXXXXXXXXX, 8XXXXXXXXXX or +7XXXXXXXXXX."""
    pick = rng.random()
    if pick < 0.2:
        return "8" + e164[1:]
    if pick < 0.3:
        return "+" + e164
    return e164


def inventory() -> dict:
    accounts = [{"id": f"acct-{a}", "verified": True} for a in range(ACCOUNTS)]
    campaigns = []
    numbers = []
    for a in range(ACCOUNTS):
        campaigns += [
            {"id": f"acct-{a}-sale", "account": f"acct-{a}", "kind": "outbound",
             "accept_inbound": True},
            {"id": f"acct-{a}-remind", "account": f"acct-{a}", "kind": "outbound",
             "accept_inbound": False},
            {"id": f"acct-{a}-support", "account": f"acct-{a}", "kind": "inbound"},
        ]
        for i in range(NUMBERS_PER_ACCOUNT):
            numbers.append({"did": did_of(a * NUMBERS_PER_ACCOUNT + i), "pool": "reservable",
                            "owner": f"acct-{a}", "callback_rule": "as_campaign",
                            "inbound_campaign": f"acct-{a}-support"})
    numbers += [{"did": f"749500000{i:02d}", "pool": "service"} for i in range(5)]
    return {"accounts": accounts, "campaigns": campaigns, "numbers": numbers}


class Population:
    """Callers and their history. First-callback pairs are used once each (the claim
    consumes them), so every engine run gets fresh ones."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.now = time.time()
        self.attempts: list[Attempt] = []
        self._first = 0
        self.second = [self._pair("7926", n, callbacks=1) for n in range(SECOND_PAIRS)]

    def _pair(self, prefix: str, n: int, callbacks: int) -> tuple[str, str]:
        number = self.rng.randrange(ACCOUNTS * NUMBERS_PER_ACCOUNT)
        did, callee, account = did_of(number), f"{prefix}{n:07d}", number // NUMBERS_PER_ACCOUNT
        # the call that was missed, 1 h ago, and an older answered one from another campaign
        self.attempts += [
            Attempt(uuid.uuid4().hex, f"acct-{account}-sale", f"acct-{account}", did, callee,
                    self.now - 3600, Outcome.NO_ANSWER, callbacks),
            Attempt(uuid.uuid4().hex, f"acct-{account}-remind", f"acct-{account}", did, callee,
                    self.now - 3 * DAY, Outcome.ANSWERED, 0),
        ]
        return did, callee

    def engine_calls(self, n: int) -> list[Call]:
        calls = []
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        for kind in self.rng.choices(kinds, weights, k=n):
            if kind == "first":
                did, callee = self._pair("7916", self._first, callbacks=0)
                self._first += 1
                calls.append(Call(did, carrier_format(self.rng, callee), "outbound"))
            elif kind == "second":
                did, callee = self.rng.choice(self.second)
                calls.append(Call(did, carrier_format(self.rng, callee), "inbound"))
            else:
                did = did_of(self.rng.randrange(ACCOUNTS * NUMBERS_PER_ACCOUNT))
                callee = f"7903{self.rng.randrange(10**7):07d}"
                calls.append(Call(did, carrier_format(self.rng, callee), "inbound"))
        return calls

    def plain_calls(self, n: int) -> list[Call]:
        """Calls of the same shape for the floor and process-per-call (nothing recorded)."""
        return [
            Call(did_of(self.rng.randrange(ACCOUNTS * NUMBERS_PER_ACCOUNT)),
                 carrier_format(self.rng, f"7916{self.rng.randrange(10**7):07d}"), None)
            for _ in range(n)
        ]


async def load_store(url: str, attempts: list[Attempt], now: float,
                     with_inventory: bool = True) -> None:
    settings = load_settings(environ={})
    client = redis_client(url, settings)
    try:
        window = settings.routing.callback_window
        history = CallbackHistory(client, KEY_PREFIX, window)
        async with asyncio.timeout(60):
            if with_inventory:
                await load_inventory(parse_inventory(inventory(), now),
                                     RoutingData(client, KEY_PREFIX), history, now)
            for start in range(0, len(attempts), 64):
                await asyncio.gather(*(history.record(a, now) for a in attempts[start:start + 64]))
    finally:
        await client.aclose()


# --- child processes ---------------------------------------------------------------------------

_children: list[subprocess.Popen] = []


def spawn(argv: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out,
                                preexec_fn=die_with_parent)  # noqa: PLW1509 (no threads here)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    stop_process(proc, STOP_TIMEOUT)
    if proc in _children:
        _children.remove(proc)


def stop_all() -> None:
    while _children:
        stop(_children[-1])


def child_env(event_loop: str = "asyncio", **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZVONOK_")}
    env["ZVONOK_AGI_EVENT_LOOP"] = event_loop
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(settings)
    return env


async def wait_listening(
    proc: subprocess.Popen, port: int, log: Path, timeout: float = START_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail(log)}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
            writer.close()
            return
        except (OSError, TimeoutError):
            await asyncio.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout} s:\n{tail(log)}")


def log_events(lines: list[bytes]) -> Counter:
    events: Counter = Counter()
    for line in lines:
        try:
            events[json.loads(line).get("event", "?")] += 1
        except (ValueError, AttributeError):
            events[line[:60].decode(errors="replace")] += 1
    return events


def tail(path: Path, lines: int = 10) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- Asterisk's side ---------------------------------------------------------------------------


@dataclass
class Result:
    latency: float | None = None  # seconds from the scheduled start; None: failed
    error: str = ""
    end: float = 0.0
    connect: float | None = None  # seconds from the scheduled start to the TCP handshake


class AsteriskSide(asyncio.Protocol):
    """One FastAGI session as Asterisk plays it, on a raw transport (cheap for the generator)."""

    def __init__(self, env: Mapping[str, str], done: asyncio.Future) -> None:
        self.env = env
        self.done = done
        self.conn = AsteriskConnection()
        self.channel = FakeChannel()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.conn.send_environment(self.env))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._pump()

    def eof_received(self) -> None:
        self.conn.receive_data(b"")
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionResetError("closed before EOF"))

    def _pump(self) -> None:
        assert self.transport is not None
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return
            if isinstance(event, Command):
                self.transport.write(self.channel.answer(self.conn, event))
            else:
                if not self.done.done():
                    self.done.set_result((event, asyncio.get_running_loop().time()))
                return


def check(channel: FakeChannel, closed: Closed, call: Call, n_commands: int) -> str:
    if not closed.complete:
        return "cut off"
    if channel.variables.get("ZV_DECIDED") != "1":
        return "no decision"
    if len(channel.commands) > n_commands:  # a first callback sends the most
        return f"{len(channel.commands)} commands"
    if call.expect is not None and channel.variables.get("ZV_ROUTE") != call.expect:
        return "wrong route"
    return ""


async def tcp_session(port: int, call: Call, at: float, n_commands: int) -> Result:
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    env = recorded_environment(call.did, call.caller, "inbound", HOST, port)
    transport = None
    try:
        async with asyncio.timeout_at(at + SESSION_TIMEOUT):
            transport, side = await loop.create_connection(
                lambda: AsteriskSide(env, done), HOST, port
            )
            connected = loop.time() - at
            closed, end = await done
    except TimeoutError:
        return Result(error="timeout")
    except OSError as exc:
        return Result(error=type(exc).__name__)
    finally:
        if not done.done():
            done.cancel()  # nobody waits for it any more
        if transport is not None:
            transport.close()
    error = check(side.channel, closed, call, n_commands)
    return Result(None if error else end - at, error, end, connected)


def local_environment(call: Call, script: str) -> dict[str, str]:
    """What Asterisk sends a local AGI script: the network lines are left out."""
    env = recorded_environment(call.did, call.caller, script)
    del env["agi_network"], env["agi_network_script"]
    env["agi_request"] = script
    return env


async def agi_session(argv: list[str], call: Call, at: float, n_commands: int) -> Result:
    loop = asyncio.get_running_loop()
    proc = None
    try:
        async with asyncio.timeout_at(at + SESSION_TIMEOUT):
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert proc.stdin is not None and proc.stdout is not None
            conn, channel = AsteriskConnection(), FakeChannel()
            proc.stdin.write(conn.send_environment(local_environment(call, Path(argv[1]).name)))
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    conn.receive_data(await proc.stdout.read(4096))
                elif isinstance(event, Command):
                    proc.stdin.write(channel.answer(conn, event))
                    await proc.stdin.drain()
                else:
                    break
            proc.stdin.close()
            code = await proc.wait()
            end = loop.time()
    except TimeoutError:
        return Result(error="timeout")
    except OSError as exc:
        return Result(error=type(exc).__name__)
    finally:
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 2.0)
    error = check(channel, event, call, n_commands) or (f"exit {code}" if code else "")
    return Result(None if error else end - at, error, end)


async def drive(
    session: Callable[[Call, float], Awaitable[Result]], calls: list[Call], rate: float
) -> tuple[float, list[Result]]:
    """Start one session per call at `rate`/s on schedule (open loop); all outcomes."""
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05
    tasks: list[asyncio.Task[Result]] = []
    try:
        for i, call in enumerate(calls):
            at = t0 + i / rate
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(session(call, at)))
        if tasks:
            await asyncio.wait(tasks, timeout=SESSION_TIMEOUT + 3.0)
    finally:  # also on Ctrl-C: no session outlives the run (AGI scripts get killed)
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=3.0)
    outcomes = []
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is None:
            outcomes.append(task.result())
        else:
            exc = None if not task.done() or task.cancelled() else task.exception()
            outcomes.append(Result(error=type(exc).__name__ if exc else "hung"))
    return t0, outcomes


# --- one target --------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    rate: float
    duration: float
    note: str = ""
    t0: float = 0.0
    outcomes: list[Result] = field(default_factory=list)
    server_cpu: float = 0.0  # seconds over the measured run
    own_cpu: float = 0.0  # of which the server's own process (the engine: without Redis)
    cpu_split: str = ""
    gen_cpu: float = 0.0
    wall: float = 0.0
    others: float = 0.0  # cores used by other processes on the machine meanwhile

    @property
    def ok(self) -> list[float]:
        return sorted(o.latency for o in self.outcomes if o.latency is not None)

    @property
    def errors(self) -> Counter:
        return Counter(o.error for o in self.outcomes if o.error)

    @property
    def throughput(self) -> float:
        ends = [o.end for o in self.outcomes if o.latency is not None]
        if not ends:
            return 0.0
        return len(ends) / max(max(ends) - self.t0, self.duration)

    def pct(self, q: float) -> float:
        ok = self.ok
        if not ok:
            return float("nan")
        return ok[min(len(ok) - 1, int(q * len(ok)))] * 1000

    @property
    def cpu_per_call(self) -> float:
        done = len(self.ok)
        return self.server_cpu / done * 1000 if done else float("nan")

    @property
    def own_cpu_per_call(self) -> float:
        done = len(self.ok)
        return self.own_cpu / done * 1000 if done else float("nan")


async def measure(
    row: Row,
    session: Callable[[Call, float], Awaitable[Result]],
    warm: list[Call],
    calls: list[Call],
    cpu: Callable[[], tuple[float, ...]],
) -> Row:
    async with asyncio.timeout(SESSION_TIMEOUT * 2 + 20 + len(warm) / row.rate):
        await drive(session, warm, row.rate)
    before, gen_before, wall, busy = cpu(), time.process_time(), time.monotonic(), machine_busy()
    async with asyncio.timeout(SESSION_TIMEOUT * 2 + 20 + row.duration):
        row.t0, row.outcomes = await drive(session, calls, row.rate)
    after = cpu()
    gen = time.process_time() - gen_before
    busy = machine_busy() - busy
    row.wall = time.monotonic() - wall
    row.gen_cpu = gen / row.wall
    parts = [b - a for a, b in zip(before, after, strict=True)]
    row.server_cpu = sum(parts)
    row.own_cpu = parts[0]
    row.others = max(0.0, (busy - gen - row.server_cpu) / row.wall)
    if len(parts) > 1 and row.ok:
        done = len(row.ok)
        row.cpu_split = " + ".join(f"{p / done * 1000:.2f}" for p in parts)
    return row


@dataclass
class Plan:
    rate: float
    agi_rate: float
    duration: float
    warmup: float
    redis_aof: bool = False
    event_loop: str = "asyncio"


def engine_process(port: int, redis: EmbeddedRedis, level: str, event_loop: str
                   ) -> tuple[list[str], dict[str, str]]:
    """The engine's arguments (after the interpreter) and environment."""
    if not redis.is_serving():
        raise RuntimeError(f"redis-server at {redis.url} is not answering")
    return ["-m", "zvonok_agi", "serve"], child_env(
        event_loop,
        ZVONOK_AGI_HOST=HOST, ZVONOK_AGI_PORT=str(port), ZVONOK_REDIS_URL=redis.url,
        ZVONOK_REDIS_KEY_PREFIX=KEY_PREFIX, ZVONOK_LOG_LEVEL=level, ZVONOK_LOG_FORMAT="json",
    )


def floor_process(port: int, commands: list[tuple[str, ...]], event_loop: str
                  ) -> tuple[list[str], dict[str, str]]:
    return ([str(BENCH / "floor_server.py"), str(port), json.dumps(commands), event_loop],
            child_env(event_loop))


async def run_engine(name: str, plan: Plan, calls: list[Call], warm: list[Call],
                     redis: EmbeddedRedis, tmp: Path, level: str, n_commands: int,
                     profile: Path | None = None) -> Row:
    port = free_port()
    log = tmp / f"{name}.log"
    python = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else [sys.executable]
    args, env = engine_process(port, redis, level, plan.event_loop)
    proc = spawn([*python, *args], env, log)
    try:
        await wait_listening(proc, port, log)
        size = log.stat().st_size
        redis_pid = redis._process.pid if redis._process else 0
        row = Row(name, plan.rate, plan.duration)
        await measure(row, lambda c, at: tcp_session(port, c, at, n_commands), warm, calls,
                      lambda: (cpu_seconds(proc.pid), cpu_seconds(redis_pid)))
        lines = log.read_bytes()[size:].splitlines() if log.exists() else []
        row.note = f"log level {level}: {len(lines) / max(len(row.outcomes), 1):.1f} lines/call"
        if level != "info" and lines:
            row.note += " (!) " + ", ".join(
                f"{n} x {event!r}" for event, n in log_events(lines).most_common(2)
            )
        return row
    finally:
        stop(proc)


async def run_floor(plan: Plan, calls: list[Call], warm: list[Call], tmp: Path,
                    commands: list[tuple[str, ...]], profile: Path | None = None) -> Row:
    port = free_port()
    log = tmp / "floor.log"
    python = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else [sys.executable]
    args, env = floor_process(port, commands, plan.event_loop)
    proc = spawn([*python, *args], env, log)
    try:
        await wait_listening(proc, port, log)
        row = Row("floor", plan.rate, plan.duration, "no store, no logic")
        return await measure(row, lambda c, at: tcp_session(port, c, at, len(commands)),
                             warm, calls, lambda: (cpu_seconds(proc.pid),))
    finally:
        stop(proc)


async def run_agi(plan: Plan, calls: list[Call], warm: list[Call],
                  commands: list[tuple[str, ...]]) -> Row:
    argv = [sys.executable, str(BENCH / "agi_script.py"), json.dumps(commands)]
    note = "new python3 per call"
    if plan.agi_rate < plan.rate:
        note += f"; offered {plan.agi_rate:g}/s, not {plan.rate:g}/s"
    row = Row("process-per-call", plan.agi_rate, plan.duration, note)
    await measure(row, lambda c, at: agi_session(argv, c, at, len(commands)),
                  warm, calls, lambda: (children_cpu(),))
    if plan.agi_rate < plan.rate and row.ok:
        cores = plan.rate * row.cpu_per_call / 1000
        row.note += f" (that would take {cores:.1f} cores for the scripts alone)"
    return row


# --- idle flood and burst ------------------------------------------------------------------

FLOOD_READY_TIMEOUT = 30.0  # the flood's connections must all be open within this
FLOOD_MAX_P99_RATIO = 2.0  # acceptance: p99 under the flood within this of the baseline


@dataclass
class Phase:
    row: Row
    log_bytes: int = 0
    log_lines: int = 0
    flood: dict = field(default_factory=dict)


def on_port(port: int, n_commands: int) -> Callable[[Call, float], Awaitable[Result]]:
    return lambda call, at: tcp_session(port, call, at, n_commands)


async def start_engine(name: str, redis: EmbeddedRedis, tmp: Path, level: str, event_loop: str,
                       **settings: str) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    log = tmp / f"{name}.log"
    proc = spawn([sys.executable, "-m", "zvonok_agi", "serve"], child_env(
        event_loop,
        ZVONOK_AGI_HOST=HOST, ZVONOK_AGI_PORT=str(port), ZVONOK_REDIS_URL=redis.url,
        ZVONOK_REDIS_KEY_PREFIX=KEY_PREFIX, ZVONOK_LOG_LEVEL=level, ZVONOK_LOG_FORMAT="json",
        **settings,
    ), log)
    await wait_listening(proc, port, log)
    return proc, port, log


async def start_flood(port: int, connections: int, seconds: float, tmp: Path
                      ) -> tuple[asyncio.subprocess.Process, float]:
    """The flood's process, once every connection is open; and how long that took."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(BENCH / "idle_flood.py"), str(port),
        "--connections", str(connections), "--seconds", f"{seconds:g}",
        stdout=subprocess.PIPE, stderr=open(tmp / "flood.err", "ab"),  # noqa: SIM115
        preexec_fn=die_with_parent,  # noqa: PLW1509 (no threads in the child)
    )
    assert proc.stdout is not None
    async with asyncio.timeout(FLOOD_READY_TIMEOUT):
        line = await proc.stdout.readline()
    if line.strip() != b"ready":
        proc.kill()
        raise RuntimeError(f"idle flood did not start: {line!r} {tail(tmp / 'flood.err')}")
    return proc, time.monotonic() - started


async def run_idle_flood(plan: Plan, pop: Population, redis: EmbeddedRedis, tmp: Path,
                         n_commands: int, connections: int) -> list[Phase]:
    """Baseline, then the same calls under the idle flood, on one engine at log level info."""
    proc, port, log = await start_engine("engine-flood", redis, tmp, "info", plan.event_loop)
    session = on_port(port, n_commands)
    redis_pid = redis._process.pid if redis._process else 0
    phases = []
    try:
        n = int(plan.rate * plan.duration)
        first = len(pop.attempts)
        warm = pop.engine_calls(int(plan.rate * plan.warmup))
        for name in ("baseline", f"{connections} idle"):
            calls = pop.engine_calls(n)
            await load_store(redis.url, pop.attempts[first:], pop.now, with_inventory=False)
            first = len(pop.attempts)
            flood = None
            if name != "baseline":
                print(f"  opening {connections} idle connections ...", file=sys.stderr)
                flood, took = await start_flood(port, connections, plan.duration + 10, tmp)
                print(f"  open after {took:.1f} s; measuring", file=sys.stderr)
            size = log.stat().st_size
            row = Row(name, plan.rate, plan.duration)
            await measure(row, session, warm, calls,
                          lambda: (cpu_seconds(proc.pid), cpu_seconds(redis_pid)))
            written = log.read_bytes()[size:]
            phase = Phase(row, len(written), written.count(b"\n"))
            if flood is not None:
                flood.terminate()
                out, _ = await flood.communicate()
                with contextlib.suppress(ValueError, IndexError):
                    phase.flood = json.loads(out.splitlines()[-1])
            phases.append(phase)
            warm = []
    finally:
        stop(proc)
    return phases


def print_head(head: str) -> None:
    print(head)
    print("-" * len(head))


def print_errors(row: Row) -> None:
    for error, count in row.errors.most_common():
        print(f"  {row.name}: {count} x {error}")


def report_flood(phases: list[Phase], plan: Plan, connections: int) -> bool:
    print(f"\nIdle flood: {connections} idle connections from {HOST} (the calls' own host), "
          f"each reconnecting when closed; calls at {plan.rate:g}/s, {plan.duration:g} s per "
          f"phase, one engine at log level info; {os.cpu_count()} CPUs")
    print_head(f"{'phase':<12}{'routed':>12}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
               f"{'srv CPU':>9}{'log KB':>9}{'log lines/s':>12}  flood")
    for phase in phases:
        r = phase.row
        routed = f"{len(r.ok)}/{len(r.outcomes)}"
        flood = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in phase.flood.items())
        print(f"{r.name:<12}{routed:>12}{r.pct(0.5):>9.2f}{r.pct(0.99):>9.2f}{r.pct(1.0):>9.2f}"
              f"{r.cpu_per_call:>9.2f}{phase.log_bytes / 1024:>9.1f}"
              f"{phase.log_lines / r.wall:>12.1f}  {flood}")
        print_errors(r)
    base, flooded = phases[0].row, phases[-1].row
    ratio_p99 = flooded.pct(0.99) / base.pct(0.99)
    passed = not flooded.errors and ratio_p99 <= FLOOD_MAX_P99_RATIO
    print(f"srv CPU: engine + redis-server ms per routed call (the flood's closes included)\n"
          f"every call routed: {'yes' if not flooded.errors else 'NO'}; p99 under the flood "
          f"x{ratio_p99:.2f} the baseline's (goal: x{FLOOD_MAX_P99_RATIO:g} at most): "
          f"{'PASS' if passed else 'FAIL'}")
    return passed


BURST_BACKLOGS = (100, None)  # asyncio's default, then the engine's


async def run_burst(plan: Plan, pop: Population, redis: EmbeddedRedis, tmp: Path,
                    n_commands: int, size: int) -> list[Row]:
    rows = []
    for backlog in BURST_BACKLOGS:
        settings = {} if backlog is None else {"ZVONOK_AGI_BACKLOG": str(backlog)}
        name = f"backlog {backlog or 'default'}"
        proc, port, _ = await start_engine(f"engine-burst-{backlog}", redis, tmp, "warning",
                                           plan.event_loop, **settings)
        try:
            first = len(pop.attempts)
            warm, calls = pop.engine_calls(int(plan.rate * plan.warmup)), pop.engine_calls(size)
            await load_store(redis.url, pop.attempts[first:], pop.now, with_inventory=False)
            row = Row(name, float(size), 0.0)
            session = on_port(port, n_commands)
            await drive(session, warm, plan.rate)
            before = await redis_connections(redis.url)
            row.t0, row.outcomes = await drive(session, calls, 1e9)  # all at once
            row.note = str(await redis_connections(redis.url) - before - 1)  # less our probe
            rows.append(row)
        finally:
            stop(proc)
        await asyncio.sleep(1.0)
    return rows


async def redis_connections(url: str) -> int:
    """Connections the Redis server has accepted so far (this probe's included)."""
    probe = redis_client(url, load_settings(environ={}))
    try:
        return int((await probe.info("stats"))["total_connections_received"])
    finally:
        await probe.aclose()


def report_burst(rows: list[Row], size: int) -> None:
    somaxconn = Path("/proc/sys/net/core/somaxconn")
    print(f"\nBurst: {size} calls started at the same instant; {os.cpu_count()} CPUs, "
          f"net.core.somaxconn {somaxconn.read_text().strip() if somaxconn.exists() else '?'}")
    print_head(f"{'engine':<16}{'routed':>10}{'p50 ms':>9}{'max ms':>9}{'connect p50':>13}"
               f"{'connect max':>13}{'SYN retried':>13}{'Redis conns':>13}")
    for r in rows:
        connects = sorted(o.connect for o in r.outcomes if o.connect is not None)
        retried = sum(1 for c in connects if c >= 0.9)
        mid = connects[len(connects) // 2] * 1000 if connects else float("nan")
        top = connects[-1] * 1000 if connects else float("nan")
        print(f"{r.name:<16}{f'{len(r.ok)}/{len(r.outcomes)}':>10}{r.pct(0.5):>9.2f}"
              f"{r.pct(1.0):>9.2f}{mid:>13.2f}{top:>13.2f}{retried:>13}{r.note:>13}")
        print_errors(r)
    print("connect: from the scheduled start to the TCP handshake; SYN retried: connects that "
          "took >= 900 ms, a dropped SYN sent again after 1 s (the backlog was full); Redis "
          "conns: connections the engine opened to Redis during the burst")


# --- watchdog on and off --------------------------------------------------------------------

# Off: no watchdog thread, and with the overload check off too, no heartbeat on the loop.
WATCHDOG_VARIANTS = (("watchdog on", {}),
                     ("watchdog off", {"ZVONOK_WATCHDOG_ENABLED": "false",
                                       "ZVONOK_AGI_OVERLOAD_LAG": "0"}))
IDLE_SECONDS = 5.0  # the engine's own CPU use without calls, before each run's calls


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of a process, in ns (/proc/PID/task/*/schedstat: finer than
    the clock ticks of /proc/PID/stat)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(stat.read_text().split()[0])
    return total


async def run_watchdog(plan: Plan, pop: Population, redis: EmbeddedRedis, tmp: Path,
                       n_commands: int, rounds: int) -> dict[str, list[Row]]:
    """The engine with its watchdog on and off, alternating, a fresh engine per run; each
    run's note is the engine's CPU ms per second while idle."""
    runs: dict[str, list[Row]] = {name: [] for name, _ in WATCHDOG_VARIANTS}
    redis_pid = redis._process.pid if redis._process else 0
    for round_ in range(rounds):
        for name, settings in WATCHDOG_VARIANTS if round_ % 2 == 0 else WATCHDOG_VARIANTS[::-1]:
            print(f"  round {round_ + 1}: {name} ...", file=sys.stderr)
            first = len(pop.attempts)
            warm = pop.engine_calls(int(plan.rate * plan.warmup))
            calls = pop.engine_calls(int(plan.rate * plan.duration))
            await load_store(redis.url, pop.attempts[first:], pop.now, with_inventory=False)
            proc, port, _ = await start_engine(f"engine-{name.replace(' ', '-')}", redis, tmp,
                                               "warning", plan.event_loop, **settings)
            try:
                idle = cpu_ns(proc.pid)
                await asyncio.sleep(IDLE_SECONDS)
                idle = (cpu_ns(proc.pid) - idle) / IDLE_SECONDS / 1e6
                row = Row(name, plan.rate, plan.duration, f"{idle:.2f}")
                runs[name].append(await measure(
                    row, on_port(port, n_commands), warm, calls,
                    functools.partial(lambda pid: (cpu_seconds(pid), cpu_seconds(redis_pid)),
                                      proc.pid)))
            finally:
                stop(proc)
    return runs


def report_watchdog(runs: dict[str, list[Row]], plan: Plan) -> bool:
    print(f"\nWatchdog on and off: the engine at {plan.rate:g} calls/s, {plan.duration:g} s per "
          f"run, runs alternating; {os.cpu_count()} CPUs")
    print_head(f"{'engine':<14}{'run':>4}{'routed':>12}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
               f"{'srv CPU':>9}{'engine CPU':>12}{'idle ms/s':>11}{'others':>8}")
    for name, rows in runs.items():
        for i, r in enumerate(rows, 1):
            engine_cpu = r.cpu_split.split(" + ")[0] if r.cpu_split else "?"
            print(f"{name:<14}{i:>4}{f'{len(r.ok)}/{len(r.outcomes)}':>12}{r.pct(0.5):>9.2f}"
                  f"{r.pct(0.99):>9.2f}{r.pct(1.0):>9.2f}{r.cpu_per_call:>9.2f}"
                  f"{engine_cpu:>12}{r.note:>11}{r.others:>8.2f}")
            print_errors(r)

    def median(values: list[float]) -> float:
        values = sorted(values)
        return values[len(values) // 2]

    on, off = (runs[name] for name, _ in WATCHDOG_VARIANTS)
    for label, of in (("p50", lambda r: r.pct(0.5)), ("p99", lambda r: r.pct(0.99)),
                      ("srv CPU per call", lambda r: r.cpu_per_call),
                      ("idle CPU ms/s", lambda r: float(r.note))):
        print(f"  median {label}: on {median([of(r) for r in on]):.2f}, "
              f"off {median([of(r) for r in off]):.2f} "
              f"({ratio(median([of(r) for r in on]), median([of(r) for r in off]))})")
    print("srv CPU: engine + redis-server ms per routed call; engine CPU: the engine's share; "
          f"idle: the engine's CPU ms per second over {IDLE_SECONDS:g} s without calls")
    return not any(r.errors for r in on + off)


# --- top rate --------------------------------------------------------------------------------
#
# The highest offered rate a target sustains: the rate goes up a step at a time, each step on
# a freshly started server, until a step does not hold.

TOP_STEP = 1.25  # each step offers this much more
TOP_MAX_P99_MS = 100.0  # a step holds if 99 % of its sessions end within this ...
TOP_MIN_DONE = 0.97  # ... it completes this share of the offered rate, and nothing fails
TOP_DURATION, TOP_WARMUP = 3.0, 1.0
TOP_TRIES = 2  # a step that does not hold is run once more: one stall of a shared machine
TOP_PAUSE = 3.0  # seconds between targets: the last step of one leaves the machine loaded
TOP_CEILING = 20_000.0


def holds(row: Row) -> bool:
    return (not row.errors and row.throughput >= TOP_MIN_DONE * row.rate
            and row.pct(0.99) <= TOP_MAX_P99_MS)


async def climb(start: float, step: Callable[[float], Awaitable[Row]]) -> list[Row]:
    """Rows of each step, up to the first that does not hold."""
    rows: list[Row] = []
    rate = start
    while rate <= TOP_CEILING:
        for _ in range(TOP_TRIES):
            print(f"  {rate:.0f}/s ...", file=sys.stderr)
            row = await step(rate)
            if holds(row):
                break
        rows.append(row)
        if not holds(row):
            break
        rate *= TOP_STEP
    return rows


def top_rate(rows: list[Row]) -> Row | None:
    held = [r for r in rows if holds(r)]
    return held[-1] if held else None


def report_top(ladders: dict[str, list[Row]], plan: Plan) -> None:
    print(f"\nTop rate: each step {TOP_DURATION:g} s after {TOP_WARMUP:g} s warm-up on a fresh "
          f"server, x{TOP_STEP:g} per step, tried up to {TOP_TRIES} times; a step holds with no "
          f"error, >= {TOP_MIN_DONE:.0%} of the offered rate done and p99 <= "
          f"{TOP_MAX_P99_MS:g} ms. {os.cpu_count()} CPUs, "
          f"Redis: {'append-only file' if plan.redis_aof else 'no append-only file'}")
    head = f"{'target':<17}{'top/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'srv CPU':>9}  next step"
    print(head)
    print("-" * len(head))
    tops = {}
    for name, rows in ladders.items():
        top = tops[name] = top_rate(rows)
        failed = rows[-1] if rows and not holds(rows[-1]) else None
        after = "" if failed is None else (
            f"{failed.rate:.0f}/s: done {failed.throughput:.0f}/s, p99 {failed.pct(0.99):.1f} ms,"
            f" {sum(failed.errors.values())} errors"
            + "".join(f", {n} x {error}" for error, n in failed.errors.most_common(2)))
        if top is None:
            print(f"{name:<17}{'-':>8}{'':>27}  {after}")
        else:
            print(f"{name:<17}{top.rate:>8.0f}{top.pct(0.5):>9.2f}{top.pct(0.99):>9.2f}"
                  f"{top.cpu_per_call:>9.2f}  {after}")
    for a, b in (("engine", "floor"), ("engine", "process-per-call")):
        if tops.get(a) and tops.get(b):
            print(f"  {a} / {b} top rate: x{tops[a].rate / tops[b].rate:.2f}")
    engine, floor = tops.get("engine"), tops.get("floor")
    if engine and floor:
        share = engine.rate / floor.rate
        print(f"goal: engine's top rate >= {GOAL_TOP_SHARE:.0%} of the floor's: {share:.0%} "
              f"({engine.rate:.0f}/s against {floor.rate:.0f}/s, event loop {plan.event_loop}): "
              f"{verdict(share >= GOAL_TOP_SHARE)}")


# --- report ------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return "   n/a"
    return f"x{a / b:5.2f}"


def report(rows: list[Row], plan: Plan) -> None:
    head = (f"{'target':<17}{'offered/s':>10}{'done/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'max ms':>9}{'errors':>8}{'srv CPU':>9}{'gen CPU':>9}{'others':>8}  note")
    print()
    aof = "append-only file, fsync every second" if plan.redis_aof else "no append-only file"
    print(f"FastAGI benchmark: {plan.duration:g} s per target after {plan.warmup:g} s warm-up, "
          f"open loop, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; Redis: {aof}")
    print(head)
    print("-" * len(head))
    for r in rows:
        errors = r.errors
        print(f"{r.name:<17}{r.rate:>10.0f}{r.throughput:>9.1f}{r.pct(0.50):>9.2f}"
              f"{r.pct(0.99):>9.2f}{r.pct(1.0):>9.2f}{sum(errors.values()):>8}"
              f"{r.cpu_per_call:>9.2f}{r.gen_cpu:>8.0%}{r.others:>8.2f}  {r.note}")
    print("srv CPU: server-side CPU ms per completed call (engine: Python process + redis-server;"
          " process-per-call: the scripts)\ngen CPU: the load generator's share of one core; "
          "others: cores busy with anything else on the machine meanwhile (noise)")
    for r in rows:
        if r.cpu_split:
            print(f"  {r.name}: {r.cpu_split} ms/call (engine process + redis-server)")
        for error, count in r.errors.most_common():
            print(f"  {r.name}: {count} x {error}")
    by = {r.name: r for r in rows}
    pairs = [("engine", "floor", "engine / floor"),
             ("engine", "engine-nolog", "engine / engine-nolog"),
             ("process-per-call", "engine", "process-per-call / engine")]
    lines = []
    for a, b, label in pairs:
        if a in by and b in by:
            ra, rb = by[a], by[b]
            line = (f"  {label:<27} p50 {ratio(ra.pct(.5), rb.pct(.5))}   "
                    f"p99 {ratio(ra.pct(.99), rb.pct(.99))}   "
                    f"throughput {ratio(ra.throughput, rb.throughput)}   "
                    f"CPU/call {ratio(ra.cpu_per_call, rb.cpu_per_call)}")
            if ra.rate != rb.rate:
                line += f"   (offered {ra.rate:g}/s vs {rb.rate:g}/s)"
            lines.append(line)
    if lines:
        print("ratios (latency and CPU: lower is better; throughput: higher is better)")
        print("\n".join(lines))
    if "engine" in by and "floor" in by:
        report_goals(by["engine"], by["floor"], plan)


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def report_goals(engine: Row, floor: Row, plan: Plan) -> None:
    """Issue 11's goals, from this run's engine and floor rows."""
    cpu, floor_cpu = engine.own_cpu_per_call, floor.own_cpu_per_call
    p99 = engine.pct(0.99)
    at = "" if engine.rate == 500 else f" (goals are for 500/s; offered {engine.rate:g}/s)"
    print(f"goals (issue 11), engine with its log line, event loop {plan.event_loop}{at}:")
    print(f"  engine process CPU per call {cpu:.3f} ms <= {GOAL_CPU_MS} ms: "
          f"{verdict(cpu <= GOAL_CPU_MS)}   (redis-server adds "
          f"{engine.cpu_per_call - cpu:.3f} ms)")
    print(f"  engine / floor CPU per call x{cpu / floor_cpu:.2f} <= x{GOAL_CPU_RATIO} "
          f"(floor {floor_cpu:.3f} ms): {verdict(cpu <= GOAL_CPU_RATIO * floor_cpu)}")
    print(f"  engine p99 {p99:.2f} ms <= {GOAL_P99_MS:g} ms: {verdict(p99 <= GOAL_P99_MS)}"
          f"   (others {engine.others:.2f} cores busy: on a busy machine p99 is the machine's)")
    if engine.errors:
        print(f"  engine errors: {sum(engine.errors.values())}: FAIL")


def write_csv(path: Path, rows: list[Row]) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write("target,offset_s,latency_ms,error\n")
        for r in rows:
            for i, o in enumerate(r.outcomes):
                latency = "" if o.latency is None else f"{o.latency * 1000:.3f}"
                out.write(f"{r.name},{i / r.rate:.4f},{latency},{o.error}\n")


def _area(filename: str, function: str) -> str:
    """A profile entry's area: the project's module, a library, or a builtin."""
    path = Path(filename)
    if filename == "~":
        return f"builtin {function}"
    parts = path.parts
    for anchor in ("zvonok_agi", "redis", "structlog", "phonenumbers", "asyncio"):
        if anchor in parts:
            i = parts.index(anchor)
            return "/".join(parts[i:])
    return path.name


def print_profile(name: str, path: Path, top: int) -> None:
    import pstats

    if not path.exists():
        print(f"\n{name}: no profile written", file=sys.stderr)
        return
    stats = pstats.Stats(str(path))
    by_file: Counter = Counter()
    total = 0.0
    entries = stats.stats.items()  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, tottime, _, _) in entries:
        total += tottime
        if function == "<method 'poll' of 'select.epoll' objects>":
            continue  # idle
        by_file[_area(filename, function)] += tottime
    busy = sum(by_file.values())
    print(f"\n=== {name} under cProfile: own time by area ({busy:.2f} s busy of "
          f"{total:.2f} s) ===")
    for area, seconds in by_file.most_common(top):
        print(f"  {seconds:7.3f} s  {seconds / busy:6.1%}  {area}")
    stats.strip_dirs()
    for key in ("tottime", "cumulative"):
        print(f"\n=== {name} under cProfile, top {top} by {key} ===")
        stats.sort_stats(key).print_stats(top)


# --- main --------------------------------------------------------------------------------------

TARGETS = ("floor", "engine", "engine-nolog", "process-per-call")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=300.0,
                   help="sessions/s offered to engine and floor (default 300)")
    p.add_argument("--agi-rate", type=float, default=50.0,
                   help="sessions/s offered to process-per-call (default 50)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per target (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per target")
    p.add_argument("--only", default=",".join(TARGETS),
                   help=f"comma-separated subset of {','.join(TARGETS)}")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="run the servers (engine, floor) under cProfile and print their N "
                   "costliest functions (the table's figures are then inflated by the profiler)")
    p.add_argument("--csv", metavar="FILE",
                   help="also write every measured session: target, scheduled offset (s), "
                   "latency (ms), error")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 s per target, 0.3 s warm-up")
    p.add_argument("--top", action="store_true",
                   help="find each target's top rate instead (steps up from --rate, from "
                   "--agi-rate for process-per-call; engine-nolog is left out)")
    p.add_argument("--instructions", action="store_true",
                   help="count the servers' user-space instructions per call under valgrind's "
                   "callgrind instead (steady where CPU time is not; ~1 min per target)")
    p.add_argument("--idle-flood", type=int, nargs="?", const=1000, metavar="N",
                   help="idle-flood mode: N (1000) idle connections reconnecting when closed, "
                   "calls at --flood-rate; a baseline phase, then the flood, --duration each")
    p.add_argument("--flood-rate", type=float, default=20.0,
                   help="calls/s in the idle-flood mode (default 20)")
    p.add_argument("--burst", type=int, nargs="?", const=1000, metavar="N",
                   help="burst mode: N (1000) calls at once, listen backlog 100 against the "
                   "engine's default")
    p.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="the engine's and the floor's event loop (default asyncio; uvloop needs "
                   "the uvloop extra)")
    p.add_argument("--watchdog", type=int, nargs="?", const=3, metavar="ROUNDS",
                   help="watchdog mode: the engine with its watchdog and heartbeat on (the "
                   "default) and off, alternating, ROUNDS (3) runs each at --rate for --duration")
    p.add_argument("--redis-aof", action="store_true",
                   help="give the benchmark's Redis the append-only file the embedded store has "
                   "(off by default: the machine's disk fsync stalls then show as engine latency)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2.0, 0.3
    args.only = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = set(args.only) - set(TARGETS)
    if unknown:
        p.error(f"--only: unknown target(s) {', '.join(sorted(unknown))}")
    if args.rate <= 0 or args.agi_rate <= 0 or not 0 < args.duration <= 120 or args.warmup < 0:
        p.error("rates must be positive, duration in (0, 120] s")
    return args


async def amain(args: argparse.Namespace, tmp: Path, redis: EmbeddedRedis | None) -> int:
    plan = Plan(args.rate, args.agi_rate, args.duration, args.warmup, args.redis_aof,
                args.event_loop)
    commands = engine_commands()
    pop = Population()
    if args.watchdog:
        assert redis is not None
        await load_store(redis.url, pop.attempts, pop.now)
        runs = await run_watchdog(plan, pop, redis, tmp, len(commands), args.watchdog)
        return 0 if report_watchdog(runs, plan) else 1
    if args.idle_flood or args.burst:
        assert redis is not None
        await load_store(redis.url, pop.attempts, pop.now)
        if args.burst:
            report_burst(await run_burst(plan, pop, redis, tmp, len(commands), args.burst),
                         args.burst)
        if args.idle_flood:
            flood_plan = replace(plan, rate=args.flood_rate)
            phases = await run_idle_flood(flood_plan, pop, redis, tmp, len(commands),
                                          args.idle_flood)
            return 0 if report_flood(phases, flood_plan, args.idle_flood) else 1
        return 0
    n_run, n_warm = int(plan.rate * plan.duration), int(plan.rate * plan.warmup)
    engine_runs = {}
    for name in ("engine", "engine-nolog"):
        if name in args.only:
            engine_runs[name] = (pop.engine_calls(n_warm), pop.engine_calls(n_run))
    if engine_runs:
        assert redis is not None
        started = time.monotonic()
        await load_store(redis.url, pop.attempts, pop.now)
        print(f"store: {ACCOUNTS * NUMBERS_PER_ACCOUNT} reserved numbers, {3 * ACCOUNTS} "
              f"campaigns, {len(pop.attempts)} attempts loaded in "
              f"{time.monotonic() - started:.1f} s", file=sys.stderr)
    if args.top:
        return await amain_top(args, plan, pop, tmp, redis, commands)
    if args.instructions:
        return await amain_instructions(args, plan, pop, tmp, redis, commands)
    rows: list[Row] = []
    profiles: list[tuple[str, Path]] = []
    for name in args.only:
        print(f"running {name} ...", file=sys.stderr)
        profile = tmp / f"{name}.prof" if args.profile and name != "process-per-call" else None
        if profile is not None:
            profiles.append((name, profile))
        if name == "floor":
            rows.append(await run_floor(plan, pop.plain_calls(n_run), pop.plain_calls(n_warm),
                                        tmp, commands, profile))
        elif name in engine_runs:
            warm, calls = engine_runs[name]
            level = "warning" if name == "engine-nolog" else "info"
            rows.append(await run_engine(name, plan, calls, warm, redis, tmp, level,
                                         len(commands), profile))
        else:
            n_agi = int(plan.agi_rate * plan.duration)
            warm = pop.plain_calls(int(plan.agi_rate * plan.warmup))
            rows.append(await run_agi(plan, pop.plain_calls(n_agi), warm, commands))
    rows.sort(key=lambda r: TARGETS.index(r.name))
    report(rows, plan)
    if args.csv:
        write_csv(Path(args.csv), rows)
    for name, profile in profiles:
        print_profile(name, profile, args.profile)
    return 1 if any(r.errors for r in rows) else 0


async def amain_top(args: argparse.Namespace, plan: Plan, pop: Population, tmp: Path,
                    redis: EmbeddedRedis | None, commands: list[tuple[str, ...]]) -> int:
    ladders: dict[str, list[Row]] = {}

    def at(rate: float) -> Plan:
        return replace(plan, rate=rate, agi_rate=rate, duration=TOP_DURATION, warmup=TOP_WARMUP)

    def counts(rate: float) -> tuple[int, int]:
        return int(rate * TOP_DURATION), int(rate * TOP_WARMUP)

    async def floor_step(rate: float) -> Row:
        n, warm = counts(rate)
        return await run_floor(at(rate), pop.plain_calls(n), pop.plain_calls(warm), tmp,
                               commands)

    async def engine_step(rate: float) -> Row:
        assert redis is not None
        n, warm = counts(rate)
        first = len(pop.attempts)
        warm_calls, calls = pop.engine_calls(warm), pop.engine_calls(n)
        await load_store(redis.url, pop.attempts[first:], pop.now, with_inventory=False)
        return await run_engine("engine", at(rate), calls, warm_calls, redis, tmp, "info",
                                len(commands))

    async def agi_step(rate: float) -> Row:
        n, warm = counts(rate)
        return await run_agi(at(rate), pop.plain_calls(n), pop.plain_calls(warm), commands)

    steps = {"floor": (floor_step, plan.rate), "engine": (engine_step, plan.rate),
             "process-per-call": (agi_step, plan.agi_rate)}
    for name in args.only:
        if name in steps:
            if ladders:
                await asyncio.sleep(TOP_PAUSE)
            print(f"climbing {name} ...", file=sys.stderr)
            step, start = steps[name]
            ladders[name] = await climb(start, step)
    report_top(ladders, plan)
    return 1 if any(top_rate(rows) is None for rows in ladders.values()) else 0


# --- instructions per call (--instructions) -----------------------------------------------------
#
# On a shared machine the CPU time of the same code varies by a third within a day; the count of
# instructions does not. Each server runs under valgrind's callgrind, its instrumentation off
# until the warm-up is over and on for a measured window of calls; its timers (the engine's
# sweeper, watchdog, refresh) run whatever the rate, so two rates are measured and the per-call
# count is what grows with the calls. User space only: the kernel's share is not counted.

INSTRUCTION_RATES = (20.0, 5.0)  # calls/s; the server runs ~50x slower under callgrind
INSTRUCTION_SECONDS = 14.0
INSTRUCTION_WARMUP = 3.0


@dataclass(frozen=True)
class Count:
    instructions: int
    calls: int
    seconds: float


async def count_instructions(name: str, argv: list[str], env: dict[str, str], port: int,
                             warm: list[Call], calls: list[Call], rate: float, tmp: Path,
                             n_commands: int) -> Count:
    out = tmp / f"{name}-{rate:g}.callgrind"
    log = tmp / f"{name}-{rate:g}.log"
    proc = spawn(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                  f"--callgrind-out-file={out}", sys.executable, *argv], env, log)
    try:
        await wait_listening(proc, port, log, timeout=START_TIMEOUT * 8)
        session = on_port(port, n_commands)
        await drive(session, warm, rate)
        callgrind_control("--instr=on", proc.pid)
        started = time.monotonic()
        _, outcomes = await drive(session, calls, rate)
        seconds = time.monotonic() - started
        callgrind_control("--dump", proc.pid)
    finally:
        stop(proc)
    errors = Counter(o.error for o in outcomes if o.error)
    if errors:
        raise RuntimeError(f"{name} at {rate:g}/s under callgrind: {dict(errors)}")
    return Count(dump_instructions(Path(f"{out}.1")), len(calls), seconds)


def callgrind_control(command: str, pid: int) -> None:
    subprocess.run(["callgrind_control", command, str(pid)], check=True, capture_output=True,
                   timeout=30)


def dump_instructions(path: Path) -> int:
    """The instructions a callgrind dump counted (its `summary:` line)."""
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{path}: no instruction count in the dump")


def per_call(high: Count, low: Count) -> tuple[float, float]:
    """(instructions per call, per second of the timers) from two rates: each window's count
    is calls x per call + seconds x timers."""
    call = ((high.instructions * low.seconds - low.instructions * high.seconds)
            / (high.calls * low.seconds - low.calls * high.seconds))
    return call, (low.instructions - low.calls * call) / low.seconds


async def amain_instructions(args: argparse.Namespace, plan: Plan, pop: Population, tmp: Path,
                             redis: EmbeddedRedis | None, commands: list[tuple[str, ...]]
                             ) -> int:
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("--instructions needs valgrind (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    results: dict[str, tuple[float, float]] = {}
    for name in args.only:
        if name == "process-per-call":
            continue
        counts = []
        for rate in INSTRUCTION_RATES:
            print(f"counting {name} at {rate:g}/s ...", file=sys.stderr)
            n, n_warm = int(rate * INSTRUCTION_SECONDS), int(rate * INSTRUCTION_WARMUP)
            port = free_port()
            if name == "floor":
                warm, calls = pop.plain_calls(n_warm), pop.plain_calls(n)
                argv, env = floor_process(port, commands, plan.event_loop)
            else:
                assert redis is not None
                first = len(pop.attempts)
                warm, calls = pop.engine_calls(n_warm), pop.engine_calls(n)
                await load_store(redis.url, pop.attempts[first:], pop.now, with_inventory=False)
                level = "warning" if name == "engine-nolog" else "info"
                argv, env = engine_process(port, redis, level, plan.event_loop)
            counts.append(await count_instructions(name, argv, env, port, warm, calls, rate,
                                                   tmp, len(commands)))
        results[name] = per_call(*counts)
    print(f"\ninstructions per call (user space, valgrind's callgrind; {INSTRUCTION_SECONDS:g} s "
          f"at {INSTRUCTION_RATES[0]:g} and {INSTRUCTION_RATES[1]:g} calls/s, the timers' share "
          f"taken out; event loop {plan.event_loop})")
    print(f"{'target':<14}{'per call':>12}{'timers/s':>12}")
    for name, (call, timers) in results.items():
        print(f"{name:<14}{call:>12,.0f}{timers:>12,.0f}")
    if "engine" in results and "floor" in results:
        print(f"engine / floor: x{results['engine'][0] / results['floor'][0]:.2f}")
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("console", "warning")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    signal.signal(signal.SIGTERM, _terminate)
    with tempfile.TemporaryDirectory(prefix="zvonok-bench-") as tmp:
        redis = None
        try:
            if ({"engine", "engine-nolog"} & set(args.only) or args.idle_flood or args.burst
                    or args.watchdog):
                redis = start_redis(Path(tmp) / "redis", aof=args.redis_aof)
            return asyncio.run(amain(args, Path(tmp), redis))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            stop_all()
            if redis is not None:
                redis.stop(timeout=STOP_TIMEOUT)


if __name__ == "__main__":
    sys.exit(main())
