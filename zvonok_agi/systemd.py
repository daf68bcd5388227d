"""systemd's notify protocol (sd_notify(3)): datagrams of `KEY=value` lines to $NOTIFY_SOCKET.

With `Type=notify` systemd waits for READY=1 before it counts the service as started, and with
`WatchdogSec=` it kills the service when WATCHDOG=1 stops coming (it sets $WATCHDOG_USEC, and
$WATCHDOG_PID to the pid meant). The engine sends WATCHDOG=1 from its event loop, so a process
frozen from outside (SIGSTOP, a paused VM, a loop stuck where the in-process watchdog cannot
act) stops sending it. Nothing here blocks: a datagram that cannot be sent is dropped.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)

PINGS_PER_PERIOD = 4  # WATCHDOG=1 this many times per WatchdogSec (sd_notify says: at least 2)


class SystemdNotifier:
    def __init__(self, address: str, watchdog_period: float | None = None) -> None:
        # A leading "@" names a socket in the abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_period = watchdog_period  # systemd's WatchdogSec, if it watches us
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.setblocking(False)
        self._next_ping = 0.0
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier | None:
        """The notifier systemd asked for, None when not run by systemd with Type=notify."""
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if not address.startswith(("/", "@")):
            return None
        period = None
        pid = environ.get("WATCHDOG_PID", "")
        if not pid or pid == str(os.getpid()):
            try:
                usec = int(environ.get("WATCHDOG_USEC", ""))
            except ValueError:
                usec = 0
            period = usec / 1e6 if usec > 0 else None
        return cls(address, period)

    @property
    def ping_interval(self) -> float | None:
        return None if self.watchdog_period is None else self.watchdog_period / PINGS_PER_PERIOD

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send(f"STOPPING=1\nSTATUS={status}")

    def ping(self, now: float) -> None:
        """WATCHDOG=1 if one is due at `now` (seconds, monotonic)."""
        interval = self.ping_interval
        if interval is not None and now >= self._next_ping:
            self._next_ping = now + interval
            self.send("WATCHDOG=1")

    def send(self, message: str) -> None:
        try:
            self._socket.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._failed:  # once: it fails the same way every time
                self._failed = True
                log.warning("systemd notification not sent", error=repr(exc))

    def close(self) -> None:
        self._socket.close()
