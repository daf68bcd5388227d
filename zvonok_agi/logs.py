"""structlog set-up: JSON lines in production, readable lines on a terminal.

Per-call fields (call id, DID, caller) are bound through contextvars by the AGI server.

A log call only renders its line and queues it: one writer thread writes the lines out, so a
slow stderr (a busy journald, a full pipe) never stalls the event loop. The writer lets lines
gather for GATHER before it writes them: waking a thread for each line would cost the loop more
than rendering it. Lines still queued at
exit are written before the process ends. Warnings that repeat (one per turned-away
connection in a flood) go through `RepeatedWarnings`: one line, then a count per interval.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import queue
import sys
import threading
import time
from typing import Any, TextIO

import orjson
import structlog

MAX_QUEUED = 100_000  # lines waiting for the writer; past it new lines are counted, not kept
WRITE_BATCH = 1000  # lines per write
GATHER = 0.02  # seconds the writer waits after a line for more to come
REPEAT_INTERVAL = 10.0  # seconds: a repeated warning is logged once, then counted this long


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    stream = sys.stderr if stream is None else stream
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(_dumps, option=orjson.OPT_NON_STR_KEYS)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    global _writer
    if _writer is not None:
        _writer.close()
    writer = _writer = LineWriter(stream)
    logger = QueuedLogger(writer)  # one for every bound logger: it only hands lines on
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _timestamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=lambda *args: logger,
        cache_logger_on_first_use=False,
    )


_second: tuple[int, str] = (0, "")  # the last second stamped, as text


def _timestamp(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The time in UTC, `2026-11-30T08:32:05.906118Z`: structlog's TimeStamper(fmt="iso",
    utc=True) in half its time (a line per call), its fraction always six digits."""
    global _second
    second, micro = divmod(round(time.time() * 1_000_000), 1_000_000)
    stamped = _second
    if stamped[0] != second:
        stamped = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    event_dict["timestamp"] = f"{stamped[1]}.{micro:06d}Z"
    return event_dict


def _dumps(value: Any, **options: Any) -> str:
    """orjson: a call line renders in a fraction of json.dumps' time."""
    return orjson.dumps(value, **options).decode()


def flush_logging(timeout: float) -> None:
    """Wait up to `timeout` for the lines queued so far to be written (from any thread)."""
    if _writer is not None:
        _writer.flush(timeout)


def close_logging() -> None:
    """Write out the lines still queued and stop the writer; later lines are written in place.
    (At exit this happens by itself.)"""
    if _writer is not None:
        _writer.close()


class LineWriter:
    """Lines from any thread, written to `stream` by a thread of its own, in order."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._queue: queue.SimpleQueue[str | threading.Event | None] = queue.SimpleQueue()
        self._dropped = 0  # counted by the loggers ...
        self._reported = 0  # ... and reported by the writer
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def put(self, line: str) -> None:
        if self._closed:
            self._write([line])  # late lines (after close, at exit): written in place
        elif self._queue.qsize() >= MAX_QUEUED:
            self._dropped += 1
        else:
            self._queue.put(line)

    def flush(self, timeout: float = 5.0) -> None:
        if self._closed:
            return  # nothing is queued any more
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True  # lines from now on are written in place
        self._queue.put(None)
        self._thread.join(timeout)
        atexit.unregister(self.close)

    def _run(self) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]
            if isinstance(items[0], str):
                time.sleep(GATHER)
            while len(items) < WRITE_BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines = [item for item in items if isinstance(item, str)]
            dropped = self._dropped - self._reported
            if dropped:
                self._reported += dropped
                lines.append(f"log writer: {dropped} lines dropped (the output fell behind)")
            if lines:
                self._write(lines)
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()  # a flush: every line put before it is written
                elif item is None:
                    stop = True

    def _write(self, lines: list[str]) -> None:
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone: nowhere left to say so


class QueuedLogger:
    """structlog's logger: hands the rendered line to the writer, at any level."""

    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def msg(self, message: str) -> None:
        self._writer.put(message)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


class RepeatedWarnings:
    """A warning that may come in floods: the first is logged at once, the rest of each
    `interval` become one line with their count (`repeated`) and the latest fields.

    Needs a running event loop; `flush()` writes the counts not yet logged (at shutdown).
    """

    def __init__(self, logger: Any, interval: float = REPEAT_INTERVAL) -> None:
        self.logger = logger
        self.interval = interval
        self._counts: dict[str, tuple[int, dict[str, Any]]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def warning(self, event: str, **fields: Any) -> None:
        seen = self._counts.get(event)
        if seen is not None:
            self._counts[event] = (seen[0] + 1, fields)
            return
        self.logger.warning(event, **fields)
        self._start(event)

    def flush(self) -> None:
        for event in list(self._timers):
            self._timers.pop(event).cancel()
            self._report(event)

    def _start(self, event: str) -> None:
        self._counts[event] = (0, {})
        loop = asyncio.get_running_loop()
        self._timers[event] = loop.call_later(self.interval, self._tick, event)

    def _tick(self, event: str) -> None:
        del self._timers[event]
        if self._report(event):
            self._start(event)  # still coming: count on, one line per interval

    def _report(self, event: str) -> int:
        count, fields = self._counts.pop(event)
        if count:
            self.logger.warning(event, repeated=count, seconds=self.interval, **fields)
        return count


_writer: LineWriter | None = None
