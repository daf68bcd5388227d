"""The admin server's outbox publisher retries what Redis missed, and rides out any failure of
its own store too: a real SQLite "database is locked" while another process holds the write
lock (an expected condition: a warning, rate-limited)."""

from __future__ import annotations

import asyncio
import sqlite3

from structlog.testing import capture_logs

from conftest import background_errors
from web_helpers import TOKEN, helpers
from zvonok_agi.app import redis_client
from zvonok_agi.numbers import store as store_module
from zvonok_agi.store.routing_data import RoutingData
from zvonok_agi.web.server import AdminServer

LOOP = "outbox-publish"
FAILED = "background loop step failed; going on"
AGAIN = "background loop working again"


async def test_a_locked_database_is_logged_counted_and_the_publisher_goes_on(
    settings, tmp_path, monkeypatch
):
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 20)  # locked: fail fast
    db_path = tmp_path / "numbers.db"
    async with helpers.control_plane(settings, db_path) as service:
        await helpers.small_world(service)
        # A change made while Redis was away waits in the outbox.
        publisher = service.publisher
        away = RoutingData(redis_client("redis://127.0.0.1:1/0", settings), "away:")
        real, publisher.data = publisher.data, away
        try:
            await service.reserve("web", helpers.ACME, helpers.MOSCOW_1)
        finally:
            publisher.data = real
            await away.redis.aclose()
        assert await service.pending() == 1
        publisher.interval = publisher.retry = publisher.max_retry = 0.02

        other = sqlite3.connect(db_path, isolation_level=None)  # another process's writer
        other.execute("BEGIN IMMEDIATE")
        before = background_errors(LOOP)
        with capture_logs() as logs:
            async with AdminServer(service, token=TOKEN):
                async with asyncio.timeout(10):
                    while background_errors(LOOP) < before + 3:
                        await asyncio.sleep(0.01)
                    other.execute("ROLLBACK")
                    while await service.pending() or not any(
                        entry["event"] == AGAIN for entry in logs
                    ):
                        await asyncio.sleep(0.01)
        other.close()
        published = await service.data.load()

    assert published.numbers[helpers.MOSCOW_1].owner == helpers.ACME
    failures = [entry for entry in logs if entry["event"] == FAILED and entry["loop"] == LOOP]
    assert len(failures) == 1  # three failures or more, one line: rate-limited
    assert failures[0]["log_level"] == "warning" and "database is locked" in failures[0]["error"]
    assert any(entry["event"] == AGAIN and entry["loop"] == LOOP for entry in logs)
