"""Run `zvonok-agi` with every event-loop step timed: `python bench/loop_probe.py OUT ARGS...`.

A step is one callback the asyncio loop runs (a task running until its next `await`, a timer,
an I/O callback): while it runs, no call is served. At exit, the steps longer than RECORD_OVER
are written to OUT as JSON lines: "at" (monotonic seconds: the machine's clock, shared by its
processes, so that the benchmark can tell in which of its phases a step fell), "ms" (wall
time), "cpu_ms" (the thread's CPU time), "gc_ms" (how long the garbage collector ran inside
it), "what" (the coroutine or callback), and from getrusage "sys_ms" (of the CPU time, in the
kernel), "faults" and "preempted", after a first line with the count of all steps;
then every pass of the garbage collector: "at", "gc" (its generation), "ms", "cpu_ms",
"freed" (the unreachable objects it found) and, for a young generation's pass, a census of what
it walks: "young" (the objects), "kinds" (their KINDS most common types, with counts),
"entries" (in the containers among them) and "largest" (the biggest container: type, length,
and for one of over CENSUS_OVER entries what it holds). A pass visits each object it walks and
each entry of a container: these counts say what made one long (the census's own time is
left out of the steps' times). A step that uses over STACK_AFTER of CPU also gets "stack":
where it was then, sampled on SIGPROF. On a busy machine a step's wall time (and a pass's)
also holds the time the process waited for a core; its CPU time is the work the step did.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import gc
import json
import resource
import signal
import sys
import time
import traceback
import types
from resource import RUSAGE_THREAD, getrusage

RECORD_OVER = 0.001  # seconds
STACK_AFTER = 0.0015  # seconds of CPU: a step still running then has its stack sampled
SAMPLE_EVERY = 0.0005  # seconds of the process's CPU between two looks (SIGPROF)
STACK_FRAMES = 14
CENSUS_OVER = 1000  # entries: a young container this big is described
KINDS = 6  # the most common types of the objects a pass walks, listed
CONTAINERS = (list, tuple, dict, set, frozenset, collections.deque)

_steps: list[tuple[float, float, float, float, str]] = []
_count = 0
_gc_time = 0.0  # seconds the collector ran, in all
# at, generation, seconds, CPU seconds, objects freed, the census of what it walked
_passes: list[tuple[float, int, float, float, int, dict]] = []
_gc_started = (0.0, 0.0)
_young: dict = {}
_probe_time = 0.0  # seconds, wall and CPU alike, the census took: no step's own


def _on_gc(phase: str, info: dict) -> None:
    global _gc_started, _gc_time, _young, _probe_time
    if phase == "start":
        census_started = time.perf_counter()
        _young = _census(info["generation"]) if info["generation"] < 2 else {}
        _probe_time += time.perf_counter() - census_started
        _gc_started = (time.perf_counter(), time.thread_time())
        return
    took, cpu = time.perf_counter() - _gc_started[0], time.thread_time() - _gc_started[1]
    _gc_time += took
    at = time.monotonic()
    _passes.append((at, info["generation"], took, cpu, info["collected"], _young))


def _census(generation: int) -> dict:
    """The objects a pass of `generation` walks (those of it and the younger ones), the entries
    of the containers among them, and the biggest one: a pass visits every entry of a container
    it walks, so one big container makes it long."""
    young = entries = 0
    largest: object = None
    size = -1
    kinds: collections.Counter[str] = collections.Counter()
    for g in range(generation + 1):
        objects = gc.get_objects(generation=g)  # the list it returns is not in it
        young += len(objects)
        for o in objects:
            kinds[type(o).__qualname__] += 1
            if isinstance(o, CONTAINERS):
                n = len(o)
                entries += n
                if n > size:
                    size, largest = n, o
        del objects
    census: dict = {"young": young, "entries": entries, "kinds": kinds.most_common(KINDS)}
    if largest is not None:
        census["largest"] = [type(largest).__qualname__, size]
        if size > CENSUS_OVER:
            census["largest"].append(_holds(largest))
    return census


def _holds(container: object) -> str:
    """What a big container holds, by its first entry."""
    if isinstance(container, dict):
        key, value = next(iter(container.items()))
        return f"{type(key).__qualname__} {str(key)[:40]!r} -> {type(value).__qualname__}"
    first = next(iter(container))  # type: ignore[call-overload]
    return f"{type(first).__qualname__} {str(first)[:60]!r}"


def _install() -> None:
    run = asyncio.events.Handle._run
    clock, cpu_clock = time.perf_counter, time.thread_time

    step: dict = {"cpu": None, "stack": None}  # the step running: its CPU clock at start

    def sample(signum: int, frame: types.FrameType | None) -> None:
        """Every SAMPLE_EVERY of the process's CPU: where a step that has used more than
        STACK_AFTER of CPU is now (its first such sample)."""
        started = step["cpu"]
        if started is not None and step["stack"] is None and cpu_clock() - started > STACK_AFTER:
            step["stack"] = traceback.format_stack(frame, limit=STACK_FRAMES)

    signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, SAMPLE_EVERY, SAMPLE_EVERY)

    def timed(handle: asyncio.events.Handle) -> None:
        global _count
        started, cpu_started, gc_before, probe_before = clock(), cpu_clock(), _gc_time, _probe_time
        usage = getrusage(RUSAGE_THREAD)
        step["cpu"], step["stack"] = cpu_started, None
        run(handle)
        step["cpu"] = None
        probed = _probe_time - probe_before
        took = clock() - started - probed
        _count += 1
        if took > RECORD_OVER:
            cpu, in_gc = cpu_clock() - cpu_started - probed, _gc_time - gc_before
            kernel = _kernel(usage, getrusage(RUSAGE_THREAD))
            kernel["stack"] = step["stack"] if cpu > STACK_AFTER else None
            _steps.append((time.monotonic(), took, cpu, in_gc, _what(handle), kernel))

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]
    gc.callbacks.append(_on_gc)


def _kernel(before: resource.struct_rusage, after: resource.struct_rusage) -> dict:
    """What the kernel did in a step: its CPU time there (system calls, page faults), the
    page faults, and the times the thread was made to give up its core."""
    return {
        "sys_ms": round((after.ru_stime - before.ru_stime) * 1000, 3),
        "faults": after.ru_minflt - before.ru_minflt + after.ru_majflt - before.ru_majflt,
        "preempted": after.ru_nivcsw - before.ru_nivcsw,
    }


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
        for at, took, cpu, in_gc, what, kernel in _steps:
            step = {
                "at": round(at, 6),
                "ms": round(took * 1000, 3),
                "cpu_ms": round(cpu * 1000, 3),
                "gc_ms": round(in_gc * 1000, 3),
                "what": what,
                **kernel,
            }
            out.write(json.dumps(step) + "\n")
        for at, generation, took, cpu, freed, young in _passes:
            collection = {"at": round(at, 6), "gc": generation, "ms": round(took * 1000, 3)}
            collection["cpu_ms"] = round(cpu * 1000, 3)
            out.write(json.dumps({**collection, "freed": freed, **young}) + "\n")


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    _install()
    atexit.register(_dump, out)
    from zvonok_agi.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
