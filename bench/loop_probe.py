"""Run `zvonok-agi` with every event-loop step timed: `python bench/loop_probe.py OUT ARGS...`.

A step is one callback the asyncio loop runs (a task running until its next `await`, a timer,
an I/O callback): while it runs, no call is served. At exit, the steps longer than RECORD_OVER
are written to OUT as JSON lines: "at" (monotonic seconds: the machine's clock, shared by its
processes, so that the benchmark can tell in which of its phases a step fell), "ms" (wall
time), "cpu_ms" (the thread's CPU time), "gc_ms" (how long the garbage collector ran inside
it) and "what" (the coroutine or callback), after a first line with the count of all steps;
then every pass of the garbage collector: "at", "gc" (its generation), "ms" and "freed" (the
unreachable objects it found). On a busy machine a step's wall time (and a pass's) also holds
the time the process waited for a core; its CPU time is the work the step itself did.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import sys
import time

RECORD_OVER = 0.001  # seconds

_steps: list[tuple[float, float, float, float, str]] = []
_count = 0
_gc_time = 0.0  # seconds the collector ran, in all
_passes: list[tuple[float, int, float, int]] = []  # at, generation, seconds, objects freed
_gc_started = 0.0


def _on_gc(phase: str, info: dict) -> None:
    global _gc_started, _gc_time
    if phase == "start":
        _gc_started = time.perf_counter()
        return
    took = time.perf_counter() - _gc_started
    _gc_time += took
    _passes.append((time.monotonic(), info["generation"], took, info["collected"]))


def _install() -> None:
    run = asyncio.events.Handle._run
    clock, cpu_clock = time.perf_counter, time.thread_time

    def timed(handle: asyncio.events.Handle) -> None:
        global _count
        started, cpu_started, gc_before = clock(), cpu_clock(), _gc_time
        run(handle)
        took = clock() - started
        _count += 1
        if took > RECORD_OVER:
            cpu, in_gc = cpu_clock() - cpu_started, _gc_time - gc_before
            _steps.append((time.monotonic(), took, cpu, in_gc, _what(handle)))

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]
    gc.callbacks.append(_on_gc)


def _what(handle: asyncio.events.Handle) -> str:
    """The coroutine a step ran (for a task), else the callback."""
    callback = handle._callback  # type: ignore[attr-defined]
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return getattr(coro, "__qualname__", repr(coro))
    return getattr(callback, "__qualname__", repr(callback))


def _dump(path: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps({"steps": _count}) + "\n")
        for at, took, cpu, in_gc, what in _steps:
            step = {
                "at": round(at, 6),
                "ms": round(took * 1000, 3),
                "cpu_ms": round(cpu * 1000, 3),
                "gc_ms": round(in_gc * 1000, 3),
                "what": what,
            }
            out.write(json.dumps(step) + "\n")
        for at, generation, took, freed in _passes:
            collection = {"at": round(at, 6), "gc": generation, "ms": round(took * 1000, 3)}
            out.write(json.dumps({**collection, "freed": freed}) + "\n")


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    _install()
    atexit.register(_dump, out)
    from zvonok_agi.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
