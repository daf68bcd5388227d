"""systemd's end of the notify protocol: a unix datagram socket, each message kept with the
time it came (a thread receives them, so that the times are the arrival times)."""

from __future__ import annotations

import socket
import threading
import time


class NotifySocket:
    def __init__(self, path: str) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(path)
        self._socket.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()

    def wait_for(self, line: str, timeout: float = 30) -> float:
        """When the first message with `line` came, waiting up to `timeout` for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, message in list(self.messages):
                if line in message.splitlines():
                    return at
            time.sleep(0.01)
        raise AssertionError(f"no {line} in {self.messages}")

    def pings(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        """When each WATCHDOG=1 came, between `start` and `end`."""
        return [at for at, m in self.messages if m == "WATCHDOG=1" and start <= at <= end]
