"""The in-process watchdog: ends the process when its event loop stops running.

Asterisk's res_agi has no read timeout: a call whose FastAGI connection reaches an engine
whose loop is stuck waits in AGI() for ever, and a stuck engine's port still accepts, so even
`hagi://` sends call after call there. A dead engine costs nothing: the kernel closes its
connections and refuses new ones, and Asterisk takes its fallback or the next engine at once.
So a thread watches the loop's heartbeat, and when the loop has not run for `timeout` seconds
it logs the loop's stack and ends the process on the spot (os._exit: no clean-up that could
hang too); systemd or Docker start it again.

A loop stuck while holding the GIL (a C call that never lets go of it, such as a runaway
regular expression) leaves no Python thread able to act. For that case faulthandler's thread,
which needs no GIL and is re-armed by the watchdog every second while it runs, ends the
process `timeout + BACKSTOP` seconds after the last re-arming, with every thread's stack on
stderr.

A process frozen from outside (SIGSTOP, a paused VM) runs none of this; that is systemd's
watchdog's part (see systemd.py). If it runs again, the loop gets a fresh `timeout`, unless
the freeze outlasted faulthandler's timer, which then ends the process as it resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

import structlog

from .health import Heartbeat
from .logs import flush_logging

log = structlog.get_logger(__name__)

EXIT_STATUS = 70  # EX_SOFTWARE: what systemd and Docker see when the watchdog ends the engine
CHECKS_PER_TIMEOUT = 8  # the thread looks this often per timeout
FLUSH_WAIT = 0.5  # seconds for the log lines to go out before the process ends
BACKSTOP = 2.0  # seconds past the timeout before faulthandler ends a process stuck in C
TOUCH_EVERY = 1.0  # seconds between touches of the heartbeat file (and faulthandler's re-arming)

STALL_HOOK = "ZVONOK_TEST_STALL"


class Watchdog:
    def __init__(self, heartbeat: Heartbeat, timeout: float, heartbeat_file: str = "") -> None:
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.heartbeat_file = Path(heartbeat_file) if heartbeat_file else None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._loop_thread = 0
        self._touch_failed = False

    @property
    def acts_within(self) -> float:
        """At most this long after the loop's last beat, the process is ended."""
        return self.timeout * (1 + 1 / CHECKS_PER_TIMEOUT)

    def start(self) -> None:
        """Start watching the running loop (call it on the loop's thread)."""
        self._loop_thread = threading.get_ident()
        self.heartbeat.start()
        if self.heartbeat_file is not None:
            self.heartbeat_file.parent.mkdir(parents=True, exist_ok=True)
            self._touch()
        faulthandler.enable()  # a fatal signal (systemd's SIGABRT, a crash in C): every stack
        faulthandler.dump_traceback_later(self.timeout + BACKSTOP, exit=True)
        self._thread.start()
        log.info("watchdog started", timeout=self.timeout)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        faulthandler.cancel_dump_traceback_later()
        faulthandler.disable()

    def _run(self) -> None:
        interval = self.timeout / CHECKS_PER_TIMEOUT
        touched = checked = resumed = time.monotonic()
        while not self._stopped.wait(interval):
            now = time.monotonic()
            if now - checked > interval + self.timeout / 2:
                # This thread did not run either: the whole process was frozen (SIGSTOP, a
                # paused VM), or the GIL held. Judge the loop by the time it has had since.
                log.warning(
                    "watchdog held up: the process was frozen", seconds=round(now - checked, 3)
                )
                resumed = now
            checked = now
            silent = now - max(self.heartbeat.last, resumed)
            if silent > self.timeout:
                self._end(silent)
            if now - touched >= TOUCH_EVERY:  # once a second is enough for these
                touched = now
                faulthandler.dump_traceback_later(self.timeout + BACKSTOP, exit=True)
                if self.heartbeat_file is not None:
                    self._touch()

    def _end(self, silent: float) -> None:
        frame = sys._current_frames().get(self._loop_thread)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(not found)"
        log.critical(
            "event loop stalled: ending the process so that Asterisk's connections close",
            stalled_s=round(silent, 3),
            timeout=self.timeout,
            loop_stack=stack,
        )
        for child in _children():  # the embedded Redis: it saves its data and ends too
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGTERM)
        flush_logging(FLUSH_WAIT)
        os._exit(EXIT_STATUS)

    def _touch(self) -> None:
        assert self.heartbeat_file is not None
        try:
            self.heartbeat_file.touch()
        except OSError as exc:
            if not self._touch_failed:  # once: it fails the same way every time
                self._touch_failed = True
                log.error(
                    "heartbeat file not written", path=str(self.heartbeat_file), error=str(exc)
                )


def _children() -> list[int]:
    """This process's child processes (Linux; none where /proc does not tell)."""
    pids = []
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(pid) for pid in children.read_text().split()]
    return pids


def install_stall_hook(environ: Mapping[str, str] | None = None) -> None:
    """TEST ONLY, off unless $ZVONOK_TEST_STALL is set when the engine starts: then SIGUSR2
    blocks the event loop as a stuck call would, for the tests of the watchdog.
    `sleep:SECONDS` blocks in time.sleep (other threads run on); `gil:SECONDS` in a C call
    that keeps the GIL (no Python thread runs). Only a process allowed to signal the engine
    (its own user, root) can set it off; nothing that comes over the network can."""
    environ = os.environ if environ is None else environ
    spec = environ.get(STALL_HOOK, "")
    if not spec:
        return
    how, _, seconds = spec.partition(":")
    if how not in ("sleep", "gil") or not seconds.isdigit():
        raise ValueError(f"{STALL_HOOK}={spec!r}: sleep:SECONDS or gil:SECONDS")
    duration = int(seconds)

    def stall() -> None:
        log.warning("test hook: stalling the event loop", how=how, seconds=duration)
        if how == "sleep":
            time.sleep(duration)
        else:
            ctypes.PyDLL(None).sleep(duration)  # a PyDLL call keeps the GIL

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, stall)
    log.warning("test hook installed: SIGUSR2 stalls the event loop", how=how, seconds=duration)
