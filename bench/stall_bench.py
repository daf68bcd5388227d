"""How long a stalled, frozen or dead engine holds Asterisk's calls, layer by layer.

    python bench/stall_bench.py              # ~1 min
    python bench/stall_bench.py --runs 5     # more runs of each

Asterisk's res_agi has no read timeout: a call stays in AGI() until the engine's socket closes
(then the dialplan takes its fallback within milliseconds, as the recordings show) or, at
connect, until the connection is refused (the next engine of a hagi:// URL, else the
fallback). So what is measured here is, for each kind of failure, the time from the failure
to the moment every FastAGI connection the engine holds sees its socket close, or a new one
is refused. Each engine is `python -m zvonok_agi serve` with its default settings, on a
redis-server this script starts; each connection is opened the way Asterisk opens it.

  in-process stall   the event loop blocked in time.sleep (the test-only hook: SIGUSR2 with
                     $ZVONOK_TEST_STALL): the watchdog ends the process
  stall with the GIL the loop blocked in a C call that keeps the GIL: faulthandler's backstop
  frozen process     SIGSTOP: nothing in the process runs. systemd ends it WatchdogSec after
                     the last WATCHDOG=1; measured: the pings on a real notify socket (how old
                     the last one is when the process freezes), then what systemd does at the
                     deadline, SIGABRT and SIGCONT, to the connections
  dead process       SIGKILL, then a new connection: refused
  not listening      SIGTERM (the drain; an overload closes the listener the same way), then
                     a new connection: refused
A dead host (no answer to SYN) is not measured here: Asterisk gives up after MAX_AGI_CONNECT,
2000 ms (tests/fixtures/asterisk/agi_server_unreachable_timeout.txt).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from local_servers import HOST, die_with_parent, free_port, start_redis
from zvonok_agi.agi.client import recorded_environment
from zvonok_agi.agi.protocol import encode_environment

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from notify_socket import NotifySocket  # noqa: E402 (the tests' stand-in for systemd)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CONNECTIONS = 10  # held open when the failure comes, and as many opened during a stall
WATCHDOG_SEC = 5.0  # the unit's WatchdogSec in docs/operations.md
STALL = "60"  # seconds the hook blocks the loop: far longer than anything measured


class Engine:
    def __init__(self, tmp: Path, redis_url: str, **env: str) -> None:
        self.port = free_port()
        self.log = tmp / f"engine-{self.port}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ZVONOK_")}
        environ.update(
            PYTHONPATH=str(ROOT),
            ZVONOK_LOG_FORMAT="json",
            ZVONOK_AGI_PORT=str(self.port),
            ZVONOK_REDIS_URL=redis_url,
            ZVONOK_REDIS_KEY_PREFIX="stall:",
            # Connections stay until the engine ends, whatever it is doing.
            ZVONOK_AGI_ENV_DEADLINE="60",
            ZVONOK_AGI_SESSION_DEADLINE="60",
            **env,
        )
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "zvonok_agi", "serve"],
                cwd=tmp,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=die_with_parent,  # noqa: PLW1509 (no threads in the child)
            )
        self.wait_for("fastagi listening")

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"engine: no {text!r}:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.01)

    def connect(self, with_env_block: bool = True) -> socket.socket:
        sock = socket.create_connection((HOST, self.port), timeout=5)
        if with_env_block:
            env = recorded_environment("74951234567", "79161234567", port=self.port)
            sock.sendall(encode_environment(env))
        return sock

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def closes(socks: list[socket.socket], since: float, timeout: float = 30.0) -> list[float]:
    """Seconds from `since` until each connection saw its socket close (end of file or reset),
    read in threads so that every close is timed when it comes."""
    times: list[float] = [float("nan")] * len(socks)

    def watch(i: int, sock: socket.socket) -> None:
        sock.settimeout(timeout)
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            return
        times[i] = time.monotonic() - since

    threads = [threading.Thread(target=watch, args=(i, s)) for i, s in enumerate(socks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for sock in socks:
        sock.close()
    return times


def refused_after(port: int, since: float) -> float:
    """Seconds from `since` until a new connection to `port` is refused."""
    while True:
        try:
            socket.create_connection((HOST, port), timeout=5).close()
        except ConnectionRefusedError:
            return time.monotonic() - since
        time.sleep(0.001)


def stall(tmp: Path, redis_url: str, how: str) -> list[float]:
    engine = Engine(tmp, redis_url, ZVONOK_TEST_STALL=f"{how}:{STALL}")
    try:
        engine.wait_for("watchdog started")
        time.sleep(random.uniform(0.5, 1.5))  # any phase of the heartbeat and the re-arming
        held = [engine.connect(with_env_block=i % 2 == 0) for i in range(CONNECTIONS)]
        stalled = time.monotonic()
        engine.process.send_signal(signal.SIGUSR2)
        time.sleep(0.1)  # (with the GIL held, not even the hook's log line gets out)
        held += [engine.connect() for _ in range(CONNECTIONS)]  # the backlog still takes them
        return closes(held, stalled)
    finally:
        engine.end()


def frozen(tmp: Path, redis_url: str, runs: int) -> dict[str, list[float]]:
    """Freeze the engine at random moments: how old systemd's last ping is then, and how long
    the connections take to close once systemd acts (SIGABRT, SIGCONT)."""
    with tempfile.TemporaryDirectory() as short:  # a unix socket path is 107 bytes at most
        systemd = NotifySocket(os.path.join(short, "notify"))
        engine = Engine(
            tmp, redis_url, NOTIFY_SOCKET=systemd.path, WATCHDOG_USEC=str(int(WATCHDOG_SEC * 1e6))
        )
        found: dict[str, list[float]] = {"interval": [], "last ping age": [], "close": []}
        try:
            time.sleep(WATCHDOG_SEC * 1.2)
            pings = systemd.pings()
            found["interval"] = [b - a for a, b in zip(pings, pings[1:], strict=False)]
            for run in range(runs):
                time.sleep(random.uniform(0.3, 0.3 + WATCHDOG_SEC / 4))  # any phase
                held = [engine.connect() for _ in range(CONNECTIONS)]
                time.sleep(0.05)
                engine.process.send_signal(signal.SIGSTOP)
                stopped = time.monotonic()
                time.sleep(0.5)  # a ping sent just before is in by now
                found["last ping age"].append(stopped - systemd.pings()[-1])
                if run < runs - 1:
                    engine.process.send_signal(signal.SIGCONT)
                    for sock in held:
                        sock.close()
                    continue
                acted = time.monotonic()  # systemd's watchdog deadline: what it sends
                engine.process.send_signal(signal.SIGABRT)
                engine.process.send_signal(signal.SIGCONT)
                found["close"] = closes(held, acted)
        finally:
            engine.end()
            systemd.close()
    return found


def dead(tmp: Path, redis_url: str, ending: int) -> float:
    engine = Engine(tmp, redis_url)
    try:
        since = time.monotonic()
        engine.process.send_signal(ending)
        return refused_after(engine.port, since)
    finally:
        engine.end()


def summary(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{min(ms):8.1f} {statistics.median(ms):8.1f} {max(ms):8.1f}  ms  (n={len(ms)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind (default 3)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="zvonok-stall-") as name:
        tmp = Path(name)
        redis = start_redis(tmp / "redis", aof=False)
        try:
            url = redis.url
            rows: list[tuple[str, str, list[float]]] = []

            def measure(label: str, how: str, run: Callable[[], list[float]]) -> None:
                print(f"{label} ...", file=sys.stderr)
                values: list[float] = []
                for _ in range(args.runs):
                    values += run()
                rows.append((label, how, values))

            measure("in-process stall", "watchdog.timeout 2 s", lambda: stall(tmp, url, "sleep"))
            measure("stall with the GIL", "faulthandler backstop", lambda: stall(tmp, url, "gil"))
            print("frozen process ...", file=sys.stderr)
            found = frozen(tmp, url, max(args.runs, 5))
            measure("dead process", "connect refused", lambda: [dead(tmp, url, signal.SIGKILL)])
            measure(
                "not listening",
                "connect refused after SIGTERM",
                lambda: [dead(tmp, url, signal.SIGTERM)],
            )
        finally:
            redis.stop()
    load = os.getloadavg()
    print(
        f"\nFrom the failure to every held connection closed (a new one refused): min, "
        f"median, max; {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f}"
    )
    for label, how, values in rows:
        print(f"{label:<20}{how:<32}{summary(values)}")
    print(f"{'frozen process':<20}{'WATCHDOG=1 interval':<32}{summary(found['interval'])}")
    print(f"{'':<20}{'last ping age at SIGSTOP':<32}{summary(found['last ping age'])}")
    print(f"{'':<20}{'SIGABRT+SIGCONT to close':<32}{summary(found['close'])}")
    ages = found["last ping age"]
    print(
        f"  frozen: systemd acts WatchdogSec ({WATCHDOG_SEC:g} s) after the last ping: "
        f"{WATCHDOG_SEC - max(ages):.2f} to {WATCHDOG_SEC - min(ages):.2f} s after the freeze "
        f"here ({WATCHDOG_SEC * 3 / 4:g} to {WATCHDOG_SEC:g} s by the ping interval), plus the "
        f"close above"
    )
    print("  dead host: MAX_AGI_CONNECT, 2000 ms per call (the recording)")
    failed = [label for label, _, values in rows if any(v != v for v in values)]
    if failed:
        print(f"connections that never closed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
