"""What both benchmarks start (free loopback ports, their own redis-server, each dying with the
benchmark even when it is SIGKILLed) and how they read CPU use from /proc."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from zvonok_agi.store.embedded import EmbeddedRedis

HOST = "127.0.0.1"
REDIS_START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
BENCH = Path(__file__).resolve().parent


def die_with_parent() -> None:
    """In a child, before exec: SIGTERM when the benchmark dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def start_redis(data_dir: Path, *, aof: bool = True) -> EmbeddedRedis:
    """The engine's embedded Redis on a free loopback port; `aof=False` leaves out the
    append-only file (and so the disk's fsync stalls)."""
    redis = EmbeddedRedis(data_dir, port=free_port(), append_only=aof)
    popen = subprocess.Popen
    subprocess.Popen = functools.partial(popen, preexec_fn=die_with_parent)  # type: ignore[misc]
    try:
        redis.start(timeout=REDIS_START_TIMEOUT)
    finally:
        subprocess.Popen = popen  # type: ignore[misc]
    return redis


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (0 if it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rfind(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def machine_busy() -> float:
    """CPU seconds every process on the machine has used so far (from /proc/stat)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    return float("nan")


def start_fake_peer(*args: str) -> tuple[subprocess.Popen[str], int]:
    """bench/fake_peer.py with `args`, and the port it listens on."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BENCH.parent), str(BENCH.parent / "tests"), env.get("PYTHONPATH")) if p
    )
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "fake_peer.py"), *args],
        cwd=BENCH.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=die_with_parent,  # noqa: PLW1509 (no threads yet)
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        stop(proc)
        raise RuntimeError(f"the fake AMI peer did not start (exit {proc.poll()})")
    return proc, int(line)


def stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
