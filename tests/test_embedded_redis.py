"""The embedded Redis with real processes: one server per data directory, whatever happened to
the process that ran it (kill -9, two engines at once), and an event loop that stays free
while the server is probed or stopped.

Servers are counted the way an operator would: live `redis-server` processes whose working
directory is the data directory (/proc).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from structlog.testing import capture_logs

from conftest import background_errors, free_port
from loop_watch import PATIENCE, LoopWatch
from zvonok_agi.app import open_redis
from zvonok_agi.config import load_settings
from zvonok_agi.store import embedded as embedded_module
from zvonok_agi.store.embedded import DataDirInUse, EmbeddedRedis

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "config" / "demo-inventory.toml"
ROUTE = ("route", "--did", "74951234567", "--caller", "79161234567")

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def redis_servers_in(data_dir: Path, *, below: bool = False) -> list[int]:
    """The pids of live redis-server processes working in `data_dir` (or in a folder below
    it)."""
    data_dir = data_dir.resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            command = (entry / "cmdline").read_bytes()
        except OSError:  # gone, a zombie, or not ours to read
            continue
        inside = cwd == data_dir or (below and cwd.is_relative_to(data_dir))
        if inside and b"redis-server" in command.split(b"\0")[0]:
            found.append(int(entry.name))
    return sorted(found)


@pytest.fixture(autouse=True)
def no_server_left(tmp_path):
    """Every redis-server working under tmp_path ends with the test, whatever the test did."""
    yield
    for pid in redis_servers_in(tmp_path, below=True):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def spawn():
    """Start a child process of the test; it ends with the test, whatever the test did."""
    started: list[subprocess.Popen] = []

    def start(*args, **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        process = subprocess.Popen(*args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def cli_env() -> dict[str, str]:
    env = dict(os.environ, ZVONOK_LOG_FORMAT="json", PYTHONPATH=str(ROOT))
    env.pop("ZVONOK_REDIS_URL", None)  # the embedded store, under var/redis
    return env


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zvonok_agi", *args],
        env=cli_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Engine:
    """`zvonok-agi serve` in a child process of the test, its log in a file."""

    def __init__(self, spawn, cwd: Path, name: str) -> None:  # type: ignore[no-untyped-def]
        self.log = cwd / f"{name}.log"
        env = dict(cli_env(), ZVONOK_AGI_PORT=str(free_port()))
        with self.log.open("w") as log:
            self.process = spawn(
                [sys.executable, "-m", "zvonok_agi", "serve"],
                env=env,
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while "fastagi listening" not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def wait_until(condition, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_an_engine_killed_with_sigkill_leaves_one_server_and_the_data_to_the_next(tmp_path, spawn):
    data_dir = tmp_path / "var" / "redis"
    assert run_cli("load", str(DEMO), cwd=tmp_path).returncode == 0
    assert redis_servers_in(data_dir) == []  # the tool stopped the server it started
    first = Engine(spawn, tmp_path, "first")
    first.wait_listening()
    [orphan] = redis_servers_in(data_dir)
    first.process.kill()  # kill -9: its redis-server keeps running, with the data dir
    first.process.wait()
    assert redis_servers_in(data_dir) == [orphan]

    second = Engine(spawn, tmp_path, "second")
    try:
        second.wait_listening()
        servers = redis_servers_in(data_dir)
        assert len(servers) == 1 and orphan not in servers
        route = run_cli(*ROUTE, cwd=tmp_path)  # a tool on the engine's server
        assert route.returncode == 0, route.stderr
        assert "outbound campaign spring-sale" in route.stdout  # the demo's history is there
        assert redis_servers_in(data_dir) == servers
    finally:
        assert second.stop() == 0, second.log.read_text()
    assert redis_servers_in(data_dir) == []
    assert "embedded redis left running" in second.log.read_text()


def test_a_second_engine_on_the_same_data_dir_refuses_to_start(tmp_path, spawn):
    data_dir = tmp_path / "var" / "redis"
    first = Engine(spawn, tmp_path, "first")
    try:
        first.wait_listening()
        [server] = redis_servers_in(data_dir)
        second = Engine(spawn, tmp_path, "second")
        assert second.process.wait(30) == 1
        error = second.log.read_text()
        assert f"the embedded Redis in {data_dir} is run by another process" in error
        assert f"pid {first.process.pid}" in error
        assert redis_servers_in(data_dir) == [server]
        route = run_cli(*ROUTE, cwd=tmp_path)
        assert route.returncode == 0, route.stderr
    finally:
        assert first.stop() == 0
    assert redis_servers_in(data_dir) == []


OWNER = """
import sys, time
from zvonok_agi.store.embedded import EmbeddedRedis
EmbeddedRedis(sys.argv[1]).start()
print("started", flush=True)
time.sleep(600)
"""


def test_a_hung_server_left_behind_is_stopped_before_a_new_one_starts(tmp_path, spawn):
    data_dir = tmp_path / "redis"
    owner = spawn(
        [sys.executable, "-c", OWNER, str(data_dir)],
        env=cli_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None and "started\n" in owner.stdout  # after its log line
    [hung] = redis_servers_in(data_dir)
    with redis.Redis(unix_socket_path=str(data_dir / "redis.sock")) as client:
        client.set("kept", "yes")
    owner.kill()
    owner.wait()
    os.kill(hung, signal.SIGSTOP)  # alive, holding the data dir, answering nothing
    server = EmbeddedRedis(data_dir)
    server.start(timeout=2)
    try:
        assert gone(hung)
        assert len(redis_servers_in(data_dir)) == 1
        with redis.Redis(unix_socket_path=str(server.socket_path)) as client:
            assert client.get("kept") == b"yes"  # in its append-only file
    finally:
        server.stop()
    assert redis_servers_in(data_dir) == []


def test_a_recycled_pid_in_the_pid_file_is_left_alone(tmp_path, spawn):
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    bystander = spawn(["sleep", "60"])
    # The pid file of a server long gone, whose pid now belongs to another process.
    (data_dir / "redis.pid").write_text(f"{bystander.pid} 1\n")
    server = EmbeddedRedis(data_dir)
    server.start()
    server.stop()
    assert bystander.poll() is None


def test_two_owners_in_one_process_are_refused_too(tmp_path):
    first, second = EmbeddedRedis(tmp_path), EmbeddedRedis(tmp_path)
    first.start()
    try:
        with pytest.raises(DataDirInUse, match=f"pid {os.getpid()}"):
            second.start()
        assert first.is_serving()
    finally:
        first.stop()
    second.start()  # free again
    second.stop()


# ---- the event loop stays free --------------------------------------------------------------


def embedded_settings(data_dir: Path):  # type: ignore[no-untyped-def]
    settings = load_settings(environ={})
    return replace(settings, redis=replace(settings.redis, url="", data_dir=str(data_dir)))


async def test_probing_a_server_that_does_not_answer_leaves_the_loop_free(tmp_path):
    # Something listens on the socket and never answers (a hung server): the tool's probe
    # waits on it, in a thread.
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(data_dir / "redis.sock"))
    listener.listen()
    accepted: list[socket.socket] = []

    def probe_connected() -> None:
        listener.settimeout(PATIENCE)
        conn, _ = listener.accept()
        accepted.append(conn)

    def probe_still_waiting() -> bool:
        conn = accepted[0]
        conn.setblocking(False)
        try:
            conn.recv(64)  # its PING
            return conn.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True  # connected, nothing more to say: still waiting for the answer

    watch = LoopWatch()
    thread = watch.in_thread(probe_connected, lambda: accepted[0].close(), probe_still_waiting)
    try:
        async with open_redis(embedded_settings(data_dir), supervise=False) as client:
            assert await client.ping()
    finally:
        await asyncio.to_thread(thread.join)
        listener.close()
    assert watch.answered
    assert redis_servers_in(data_dir) == []


async def test_stopping_a_server_slow_to_exit_leaves_the_loop_free(tmp_path):
    data_dir = tmp_path / "redis"
    stopped: list[int] = []

    def asked_to_stop() -> None:  # SIGTERM waits, pending, while the server is stopped
        wait_until(lambda: sigterm_pending(stopped[0]), timeout=PATIENCE)

    watch = LoopWatch()
    async with open_redis(embedded_settings(data_dir), supervise=False) as client:
        assert await client.ping()
        [server] = redis_servers_in(data_dir)
        os.kill(server, signal.SIGSTOP)
        stopped.append(server)
        thread = watch.in_thread(asked_to_stop, lambda: os.kill(server, signal.SIGCONT))
    await asyncio.to_thread(thread.join)
    assert watch.answered
    assert gone(server)


def sigterm_pending(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    pending = next(line for line in status.splitlines() if line.startswith("ShdPnd:"))
    return bool(int(pending.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


async def test_the_supervisor_rides_out_a_failed_restart(tmp_path, monkeypatch):
    # The server dies, and the first restart fails with something other than an OSError.
    real, defects = embedded_module.redis_server_binary, [RuntimeError("injected defect")]

    def fails_once() -> str:
        if defects:
            raise defects.pop()
        return real()

    before = background_errors("embedded-redis")
    async with EmbeddedRedis(tmp_path / "redis") as server:
        [first] = redis_servers_in(server.data_dir)
        monkeypatch.setattr(embedded_module, "redis_server_binary", fails_once)
        with capture_logs() as logs:
            os.kill(first, signal.SIGKILL)
            async with asyncio.timeout(20):
                while not (server.running and await asyncio.to_thread(server.is_serving)):
                    await asyncio.sleep(0.05)
        [second] = redis_servers_in(server.data_dir)
    assert second != first and not defects
    assert background_errors("embedded-redis") == before + 1
    [failure] = [e for e in logs if e["event"] == "background loop step failed; going on"]
    assert failure["loop"] == "embedded-redis" and "injected defect" in failure["error"]
