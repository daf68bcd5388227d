"""Logging: lines leave the event loop's thread, none is lost at exit, floods are counted."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from time import gmtime as time_gmtime
from time import strftime as time_strftime

import structlog
from structlog.testing import capture_logs

from zvonok_agi.logs import LineWriter, RepeatedWarnings, close_logging, configure_logging

ROOT = Path(__file__).resolve().parents[1]


def test_a_log_call_never_waits_for_a_stuck_output():
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    lines = 200
    try:
        configure_logging("json", "info", stream=stream)
        log = structlog.get_logger("test")
        # 400 KB: far more than a pipe holds while nobody reads it
        logging = threading.Thread(
            target=lambda: [log.info("call routed", n=n, pad="x" * 2000) for n in range(lines)]
        )
        logging.start()
        logging.join(timeout=10)
        assert not logging.is_alive(), "a log call blocked on its output"
        received = b""
        with os.fdopen(read_end, "rb") as reader:
            while received.count(b"\n") < lines:
                chunk = reader.read1(1 << 16)
                assert chunk, "the writer stopped before every line was out"
                received += chunk
    finally:
        close_logging()
        structlog.reset_defaults()
        stream.close()
    assert [json.loads(line)["n"] for line in received.splitlines()] == list(range(lines))


def test_lines_still_queued_at_exit_are_written():
    script = (
        "import structlog\n"
        "from zvonok_agi.logs import configure_logging\n"
        "configure_logging('json', 'info')\n"
        "log = structlog.get_logger()\n"
        "for n in range(20000):\n"
        "    log.info('call routed', n=n)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    numbers = [json.loads(line)["n"] for line in done.stderr.splitlines()]
    assert numbers == list(range(20000))


def test_a_full_queue_drops_lines_and_says_how_many(monkeypatch):
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    monkeypatch.setattr("zvonok_agi.logs.MAX_QUEUED", 10)
    writer = LineWriter(stream)
    try:
        for n in range(5000):  # the pipe fills, the writer waits, the queue fills
            writer.put(f"{n:04d}" + "x" * 100)
        received = b""
        with os.fdopen(read_end, "rb") as reader:
            writer.close()
            stream.close()
            received = reader.read()
    finally:
        writer.close()
    text = received.decode()
    kept = [line for line in text.splitlines() if not line.startswith("log writer")]
    dropped = sum(int(line.split()[2]) for line in text.splitlines() if "dropped" in line)
    assert dropped > 0
    assert len(kept) + dropped == 5000
    assert kept == sorted(kept)  # in order


async def test_repeated_warnings_become_one_line_and_a_count_per_interval():
    with capture_logs() as logs:
        repeated = RepeatedWarnings(structlog.get_logger(), interval=0.05)
        for n in range(1000):
            repeated.warning("fastagi peer not allowed", peer=f"10.0.0.{n % 250}:5000")
        assert [entry.get("repeated") for entry in logs] == [None]  # the first, at once
        await asyncio.sleep(0.2)  # two intervals: the count, then nothing more came
        repeated.warning("fastagi peer not allowed", peer="10.0.0.1:5000")
        repeated.warning("fastagi at capacity; session turned away", peer="127.0.0.1:1")
        repeated.warning("fastagi at capacity; session turned away", peer="127.0.0.1:2")
        repeated.flush()  # at shutdown: the counts not yet logged
    assert [(e["event"], e.get("repeated"), e["peer"]) for e in logs] == [
        ("fastagi peer not allowed", None, "10.0.0.0:5000"),
        ("fastagi peer not allowed", 999, "10.0.0.249:5000"),  # with the latest fields
        ("fastagi peer not allowed", None, "10.0.0.1:5000"),  # a new flood: at once again
        ("fastagi at capacity; session turned away", None, "127.0.0.1:1"),
        ("fastagi at capacity; session turned away", 1, "127.0.0.1:2"),
    ]
    assert all(e["log_level"] == "warning" for e in logs)


def test_the_timestamp_is_iso_utc_with_microseconds_and_follows_the_clock(monkeypatch):
    from types import SimpleNamespace

    import zvonok_agi.logs as logs

    clock = iter([1764491525.000001, 1764491525.25, 1764491526.5, 1767225600.0])
    monkeypatch.setattr(
        logs,
        "time",
        SimpleNamespace(time=lambda: next(clock), strftime=time_strftime, gmtime=time_gmtime),
    )
    stamps = [logs._timestamp(None, "info", {})["timestamp"] for _ in range(4)]
    assert stamps == [
        "2025-11-30T08:32:05.000001Z",
        "2025-11-30T08:32:05.250000Z",
        "2025-11-30T08:32:06.500000Z",  # the next second
        "2026-01-01T00:00:00.000000Z",  # the next year
    ]


def test_a_json_line_carries_the_time_it_was_logged():
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    before = datetime.now(UTC)
    try:
        configure_logging("json", "info", stream=stream)
        structlog.get_logger("test").info("one")
        close_logging()
    finally:
        structlog.reset_defaults()
        stream.close()
    with os.fdopen(read_end, "rb") as reader:
        line = json.loads(reader.read().splitlines()[0])
    assert before <= datetime.fromisoformat(line["timestamp"]) <= datetime.now(UTC)
