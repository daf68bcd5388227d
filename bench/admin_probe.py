"""Run `zvonok-agi` with what its store work costs counted: `python bench/admin_probe.py OUT
[--profile FILE] ARGS...`.

On every SIGUSR1 it writes to OUT (JSON, replaced) a snapshot of its counts so far: "threads"
(each thread's CPU seconds, utime + stime from /proc: the event loop's, aiosqlite's, others),
"statements" (SQL statements SQLite ran: its trace callback), "trips" (hand-overs to
aiosqlite's thread, each a queue and a wake-up of the loop), "seq" (how many snapshots). With
--profile, cProfile runs on the event loop's thread between the first SIGUSR1 and the second,
timed by that thread's CPU clock (a wait is no cost), and its stats go to FILE at the second.
"""

from __future__ import annotations

import cProfile
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import aiosqlite
import redis.asyncio

_counts = {"statements": 0, "trips": 0, "redis": 0, "seq": 0}


def _count_trips() -> None:
    execute = aiosqlite.Connection._execute

    async def counted(self, fn, *args, **kwargs):
        _counts["trips"] += 1
        return await execute(self, fn, *args, **kwargs)

    aiosqlite.Connection._execute = counted  # type: ignore[method-assign]


def _count_redis() -> None:
    execute = redis.asyncio.Redis.execute_command

    async def counted(self, *args, **options):
        _counts["redis"] += 1
        return await execute(self, *args, **options)

    redis.asyncio.Redis.execute_command = counted  # type: ignore[method-assign]


def _count_statements() -> None:
    from zvonok_agi.numbers.databases import SQLite

    opened = SQLite.open.__func__  # type: ignore[attr-defined]

    def statement(sql: str) -> None:  # in aiosqlite's thread; the GIL makes += whole
        _counts["statements"] += 1

    async def traced(cls, path: str) -> SQLite:
        database = await opened(cls, path)
        await database._db.set_trace_callback(statement)
        return database

    SQLite.open = classmethod(traced)  # type: ignore[method-assign, assignment]


def _threads() -> dict[str, float]:
    """CPU seconds of each live thread, by name (the main one: "loop")."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    main = threading.main_thread().native_id
    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        tid = int(task.name)
        name = "loop" if tid == main else names.get(tid, f"native-{tid}")
        if name.startswith("Thread-") and "_connection_worker_thread" in name:
            name = "aiosqlite"
        cpu[name] = cpu.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return cpu


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    profile_to = None
    if argv[:1] == ["--profile"]:
        profile_to, argv = argv[1], argv[2:]
    profiler = cProfile.Profile(time.thread_time) if profile_to else None

    def snapshot(signum: int, frame: object) -> None:
        _counts["seq"] += 1
        if profiler is not None and _counts["seq"] == 1:
            profiler.enable()
        elif profiler is not None and _counts["seq"] == 2:
            profiler.disable()
            profiler.dump_stats(profile_to)
        document = {**_counts, "threads": _threads()}
        Path(out + ".part").write_text(json.dumps(document))
        os.replace(out + ".part", out)

    _count_trips()
    _count_redis()
    _count_statements()
    signal.signal(signal.SIGUSR1, snapshot)
    from zvonok_agi.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
