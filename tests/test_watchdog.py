"""A stalled engine must not hold calls: the engine as a real process, its event loop blocked
on purpose through the test-only hook (SIGUSR2 with $ZVONOK_TEST_STALL set), FastAGI
connections as Asterisk opens them, and a real unix datagram socket standing in for systemd.

- the watchdog ends a process whose loop is blocked within its timeout, and every FastAGI
  connection, opened before the stall or during it, sees the socket close;
- a loop blocked while holding the GIL is ended by faulthandler's backstop;
- systemd's socket receives READY=1 once the engine listens, WATCHDOG=1 while the loop runs
  and none while it is blocked or the process is frozen (SIGSTOP), then STOPPING=1;
- the heartbeat file a container healthcheck reads goes stale while the process is frozen.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from conftest import free_port
from notify_socket import NotifySocket
from zvonok_agi.agi.client import recorded_environment
from zvonok_agi.agi.protocol import encode_environment
from zvonok_agi.config import Settings
from zvonok_agi.healthcheck import check
from zvonok_agi.store.embedded import ServerProcess
from zvonok_agi.systemd import SystemdNotifier
from zvonok_agi.watchdog import EXIT_STATUS

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 1.0  # the watchdog's, in these tests
# Beyond the timeout: the watchdog's check interval, writing out the log, and a loaded machine.
SLACK = 1.5

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="signals and /proc: Linux")


class EngineProcess:
    """`zvonok-agi serve` as a child process of the test, its log in a file."""

    def __init__(self, cwd: Path, settings: Settings, **env: str) -> None:
        self.port = free_port()
        self.log = cwd / "engine.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ZVONOK_")}
        environ.update(
            PYTHONPATH=str(ROOT),
            ZVONOK_LOG_FORMAT="json",
            ZVONOK_AGI_PORT=str(self.port),
            ZVONOK_REDIS_URL=settings.redis.url,
            ZVONOK_REDIS_KEY_PREFIX=settings.redis.key_prefix,
            ZVONOK_WATCHDOG_TIMEOUT=str(TIMEOUT),
        )
        environ.update(env)
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "zvonok_agi", "serve"],
                env=environ,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.02)

    def signal(self, number: int) -> float:
        """Send a signal; when it was sent."""
        self.process.send_signal(number)
        return time.monotonic()

    def ended_after(self, since: float, timeout: float = 15) -> float:
        self.process.wait(timeout)
        return time.monotonic() - since


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[list[EngineProcess]]:
    """Engines started by the test; none outlives it."""
    started: list[EngineProcess] = []
    yield started
    for engine in started:
        if engine.process.poll() is None:
            engine.process.kill()
        engine.process.wait()


def env_block(port: int) -> bytes:
    return encode_environment(recorded_environment("74951234567", "79161234567", port=port))


def connect(port: int, payload: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if payload:
        sock.sendall(payload)
    return sock


def closed(sock: socket.socket, timeout: float = 2.0) -> bool:
    """Whether the peer closed the connection (an end of file or a reset) within `timeout`,
    reading past whatever it sent first."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_a_blocked_loop_ends_the_process_and_every_connection_closes(tmp_path, settings, engines):
    engine = EngineProcess(
        tmp_path,
        settings,
        ZVONOK_TEST_STALL="sleep:60",
        ZVONOK_AGI_SESSION_DEADLINE="60",  # nothing ends on its own while the loop runs
        ZVONOK_AGI_ENV_DEADLINE="60",
    )
    engines.append(engine)
    engine.wait_for("watchdog started")
    block = env_block(engine.port)
    before = [
        connect(engine.port),  # sends nothing yet
        connect(engine.port, block[:40]),  # half an env block
        connect(engine.port, block),  # a session: the engine's first command waits for a reply
    ]
    before[2].settimeout(5)
    assert before[2].recv(4096).endswith(b"\n")  # a command, waiting for its reply

    stalled = engine.signal(signal.SIGUSR2)
    engine.wait_for("test hook: stalling the event loop")
    # The port still accepts: the kernel completes these into the backlog, and Asterisk
    # sends its env block.
    during = [connect(engine.port, block) for _ in range(3)]
    took = engine.ended_after(stalled)

    assert engine.process.returncode == EXIT_STATUS
    assert TIMEOUT - 0.15 < took < TIMEOUT + SLACK
    for sock in before + during:
        assert closed(sock)
        sock.close()
    log = engine.log.read_text()
    assert "event loop stalled: ending the process" in log
    assert "time.sleep(duration)" in log  # the loop's stack says where it was stuck
    with pytest.raises(ConnectionRefusedError):
        connect(engine.port)


def test_a_loop_blocked_holding_the_gil_is_ended_by_the_backstop(tmp_path, settings, engines):
    engine = EngineProcess(tmp_path, settings, ZVONOK_TEST_STALL="gil:60")
    engines.append(engine)
    engine.wait_for("watchdog started")
    call = connect(engine.port)
    stalled = engine.signal(signal.SIGUSR2)
    took = engine.ended_after(stalled)
    assert engine.process.returncode == 1  # faulthandler's exit
    # No Python thread could run: faulthandler's own thread ended it, BACKSTOP (2 s) after
    # the timeout, with every thread's stack.
    assert took < TIMEOUT + 2.0 + SLACK
    log = engine.log.read_text()
    assert "Timeout (0:00:03)!" in log and "in stall" in log
    assert closed(call)
    call.close()


def largest_gap(times: list[float]) -> float:
    return max(b - a for a, b in zip(times, times[1:], strict=False))


def test_systemd_hears_ready_then_pings_while_the_loop_runs_then_stopping(
    tmp_path, settings, engines
):
    ping_every = 0.1  # WatchdogSec 0.4 s: PINGS_PER_PERIOD pings in each
    heartbeat = tmp_path / "var" / "heartbeat"
    with tempfile.TemporaryDirectory() as short:  # a unix socket path has 107 bytes at most
        systemd = NotifySocket(os.path.join(short, "notify"))
        try:
            engine = EngineProcess(
                tmp_path,
                settings,
                NOTIFY_SOCKET=systemd.path,
                WATCHDOG_USEC=str(int(ping_every * 4 * 1e6)),
                ZVONOK_TEST_STALL="sleep:2",
                ZVONOK_WATCHDOG_TIMEOUT="5",  # a 2 s stall is left alone here
                ZVONOK_WATCHDOG_HEARTBEAT_FILE=str(heartbeat),
            )
            engines.append(engine)
            ready = systemd.wait_for("READY=1")
            connect(engine.port).close()  # READY=1 came once it listens
            time.sleep(1.0)
            running = systemd.pings(ready, time.monotonic())
            assert len(running) >= 5 and largest_gap(running) < ping_every + 0.3
            assert check(str(heartbeat), max_age=1.5) is None

            stalled = engine.signal(signal.SIGUSR2)
            engine.wait_for("test hook: stalling the event loop")
            time.sleep(2.5)
            around = systemd.pings(stalled - 0.5, time.monotonic())
            assert largest_gap(around) > 1.8  # none while the loop was blocked, then again
            assert around[-1] > stalled + 2.0

            frozen = engine.signal(signal.SIGSTOP)
            time.sleep(2.0)
            assert check(str(heartbeat), max_age=1.5) is not None  # what Docker would see
            thawed = engine.signal(signal.SIGCONT)
            assert systemd.pings(frozen + 0.2, thawed) == []
            systemd.wait_for("WATCHDOG=1", timeout=5)
            time.sleep(0.5)
            assert systemd.pings(thawed, time.monotonic())
            assert check(str(heartbeat), max_age=1.5) is None

            stopping = engine.signal(signal.SIGTERM)
            assert engine.process.wait(30) == 0, engine.log.read_text()
            assert systemd.wait_for("STOPPING=1") >= stopping
        finally:
            systemd.close()
    # READY=1 first, STOPPING=1 last (WATCHDOG=1 may go on while the calls drain).
    kinds = [m.splitlines()[0] for _, m in systemd.messages if m != "WATCHDOG=1"]
    assert systemd.messages[0][1].startswith("READY=1")
    assert kinds[-1] == "STOPPING=1", kinds
    assert kinds.count("READY=1") == kinds.count("STOPPING=1") == 1
    log = engine.log.read_text()
    assert "systemd's WatchdogSec is too short for watchdog.timeout" in log


def test_the_notifier_follows_the_environment_systemd_sets():
    me = str(os.getpid())
    assert SystemdNotifier.from_environ({}) is None
    assert SystemdNotifier.from_environ({"NOTIFY_SOCKET": "relative/path"}) is None
    abstract = SystemdNotifier.from_environ({"NOTIFY_SOCKET": "@zvonok/notify"})
    assert abstract is not None and abstract.address == "\0zvonok/notify"
    assert abstract.watchdog_period is None and abstract.ping_interval is None
    watched = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "5000000", "WATCHDOG_PID": me}
    notifier = SystemdNotifier.from_environ(watched)
    assert notifier is not None and notifier.ping_interval == 1.25
    other = SystemdNotifier.from_environ({**watched, "WATCHDOG_PID": "1"})
    assert other is not None and other.watchdog_period is None  # meant for another process
    for made in (abstract, notifier, other):
        made.close()


def test_the_notifier_sends_to_an_abstract_socket_and_survives_a_missing_one():
    name = f"@zvonok-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name[1:])
        systemd.settimeout(2)
        notifier = SystemdNotifier(name, watchdog_period=4.0)
        notifier.ready("taking calls")
        notifier.ping(100.0)
        notifier.ping(100.5)  # not due: one per second
        notifier.ping(101.0)
        notifier.stopping("draining calls")
        received = [systemd.recv(4096).decode() for _ in range(4)]
        notifier.close()
    assert received == [
        "READY=1\nSTATUS=taking calls",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=draining calls",
    ]
    gone = SystemdNotifier(name)  # nobody listens any more: dropped, logged once
    with capture_logs() as logs:
        gone.ready("x")
        gone.ready("x")
    gone.close()
    assert [entry["event"] for entry in logs] == ["systemd notification not sent"]


def test_the_healthcheck_reads_the_heartbeat_files_age(tmp_path):
    beat = tmp_path / "heartbeat"

    def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "zvonok_agi.healthcheck", *args],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=30,
        )

    missing = healthcheck(str(beat))
    assert missing.returncode == 1 and "no heartbeat file" in missing.stdout
    beat.touch()
    assert healthcheck(str(beat)).returncode == 0
    old = time.time() - 10
    os.utime(beat, (old, old))
    stale = healthcheck(str(beat), "3")
    assert stale.returncode == 1 and "the engine is not running" in stale.stdout
    assert healthcheck(str(beat), "30").returncode == 0
    assert healthcheck(str(beat), "soon").returncode == 2
    assert healthcheck().returncode == 2


def test_a_process_frozen_for_a_while_runs_on_when_it_resumes(tmp_path, settings, engines):
    engine = EngineProcess(tmp_path, settings)
    engines.append(engine)
    engine.wait_for("watchdog started")
    engine.signal(signal.SIGSTOP)
    time.sleep(TIMEOUT * 2)  # past the watchdog's timeout, short of faulthandler's
    engine.signal(signal.SIGCONT)
    engine.wait_for("watchdog held up: the process was frozen")
    time.sleep(TIMEOUT * 1.5)
    assert engine.process.poll() is None, engine.log.read_text()
    session = connect(engine.port, env_block(engine.port))
    session.settimeout(5)
    assert session.recv(4096).endswith(b"\n")  # it routes: its first command came
    session.close()


def test_the_embedded_redis_ends_with_an_engine_its_watchdog_ended(tmp_path, settings, engines):
    """SIGTERM to the engine's children before it ends: the embedded Redis writes its data and
    exits rather than outliving it."""
    engine = EngineProcess(tmp_path, settings, ZVONOK_REDIS_URL="", ZVONOK_TEST_STALL="sleep:60")
    engines.append(engine)
    engine.wait_for("watchdog started")
    pid, started = (int(field) for field in (tmp_path / "var/redis/redis.pid").read_text().split())
    server = ServerProcess(pid, started)
    assert ServerProcess.find(pid) == server
    try:
        engine.signal(signal.SIGUSR2)
        assert engine.process.wait(15) == EXIT_STATUS
        deadline = time.monotonic() + 10
        while ServerProcess.find(pid) == server:
            assert time.monotonic() < deadline, "redis-server outlived the engine"
            time.sleep(0.05)
    finally:
        if ServerProcess.find(pid) == server:
            os.kill(pid, signal.SIGKILL)
