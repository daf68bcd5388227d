"""The event loop's heartbeat, and whether the engine should take new calls.

`Heartbeat` is one callback on the loop every `TICK` seconds, nothing per call: how late it
runs is the loop's lag, and the time it last ran tells a thread outside the loop (the
watchdog) whether the loop still runs at all. Whatever needs the loop's pulse (taking calls
or not, systemd's keep-alive) listens to it.

`Admission` decides from the pulse whether the FastAGI server should listen: not before the
routing data is loaded (every call would get engine_error), nor while the loop has been
lagging for a while (calls would time out in turn); in both cases a refused connection sends
Asterisk to the next engine at once. It accepts again only after the loop has kept up for a
while, so that an overloaded engine does not flap between the two.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

TICK = 0.1  # seconds between beats

Listener = Callable[[float, float], None]  # (now, lag), times in seconds of time.monotonic()


class Heartbeat:
    def __init__(self, interval: float = TICK) -> None:
        self.interval = interval
        self.last = time.monotonic()  # when it last beat; read by other threads
        self.listeners: list[Listener] = []
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        if self._handle is None:
            self.last = time.monotonic()
            self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = time.monotonic() + self.interval
        self._handle = loop.call_later(self.interval, self._beat, loop)

    def _beat(self, loop: asyncio.AbstractEventLoop) -> None:
        now = self.last = time.monotonic()
        lag = max(0.0, now - self._due)
        self._schedule(loop)  # first: a listener that fails must not stop the heartbeat
        for listener in self.listeners:
            try:
                listener(now, lag)
            except Exception:
                log.exception("heartbeat listener failed", listener=repr(listener))


@dataclass
class Admission:
    """Overload by the loop's lag: late by more than `lag` for `late_for` seconds (two late
    beats at least: one long pause is no overload), over once it has kept up for
    `recovery` seconds. `lag` 0: never."""

    lag: float
    late_for: float
    recovery: float
    overloaded: bool = False
    _late_since: float | None = None
    _on_time_since: float | None = None

    def observe(self, now: float, lag: float) -> None:
        if self.lag <= 0:
            return
        if lag > self.lag:
            self._on_time_since = None
            if self._late_since is None:
                self._late_since = now
            elif not self.overloaded and now - self._late_since >= self.late_for:
                self.overloaded = True
        else:
            self._late_since = None
            if self._on_time_since is None:
                self._on_time_since = now
            if self.overloaded and now - self._on_time_since >= self.recovery:
                self.overloaded = False

    def refusal(self, routing_loaded: bool) -> str | None:
        """Why the engine should not take calls now; None: it should."""
        if not routing_loaded:
            return "routing data not loaded"
        if self.overloaded:
            return "event loop overloaded"
        return None
