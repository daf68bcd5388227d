"""The admin server's outbox publisher retries what Redis missed, and rides out any failure of
its own store too: the store busy while another process holds the writers' lock (SQLite's
"database is locked") or the publisher's (an expected condition: a warning, rate-limited)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from structlog.testing import capture_logs

from conftest import background_errors
from web_helpers import TOKEN, helpers
from zvonok_agi.app import redis_client
from zvonok_agi.numbers import databases
from zvonok_agi.numbers import store as store_module
from zvonok_agi.numbers.store import Store
from zvonok_agi.store.routing_data import RoutingData
from zvonok_agi.web.server import AdminServer

LOOP = "outbox-publish"
FAILED = "background loop step failed; going on"
AGAIN = "background loop working again"
# What another process holds, and what the publisher says then. On PostgreSQL the publisher
# takes no writers' lock (its bookkeeping runs beside the writers): only SQLite's is tried.
HELD = {
    "writers": ("database is locked", lambda store: writers_held(store)),
    "publisher": ("publishing", lambda store: store.publishing()),
}


@contextlib.asynccontextmanager
async def writers_held(store: Store):
    async with store.transaction() as q:
        await q.outbox_size()  # SQLite's BEGIN IMMEDIATE goes with the first statement
        yield


@pytest.mark.parametrize("held", HELD)
async def test_a_busy_store_is_logged_counted_and_the_publisher_goes_on(
    settings, store_url, monkeypatch, held
):
    if held == "writers" and not store_url.startswith("sqlite"):
        pytest.skip("on PostgreSQL the publisher does not wait for the writers")
    message, lock = HELD[held]
    monkeypatch.setattr(databases, "BUSY_TIMEOUT_MS", 20)  # locked: fail fast
    monkeypatch.setattr(store_module, "PUBLISHER_WAIT", 0.05)
    async with helpers.control_plane(settings, store_url) as service:
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

        async with await Store.open(store_url) as other, contextlib.AsyncExitStack() as holding:
            await holding.enter_async_context(lock(other))  # another process holds it
            before = background_errors(LOOP)
            with capture_logs() as logs:
                async with AdminServer(service, token=TOKEN):
                    async with asyncio.timeout(10):
                        while background_errors(LOOP) < before + 3:
                            await asyncio.sleep(0.01)
                        await holding.aclose()
                        while await service.pending() or not any(
                            entry["event"] == AGAIN for entry in logs
                        ):
                            await asyncio.sleep(0.01)
        published = await service.data.load()

    assert published.numbers[helpers.MOSCOW_1].owner == helpers.ACME
    failures = [entry for entry in logs if entry["event"] == FAILED and entry["loop"] == LOOP]
    assert len(failures) == 1  # three failures or more, one line: rate-limited
    assert failures[0]["log_level"] == "warning" and message in failures[0]["error"]
    assert any(entry["event"] == AGAIN and entry["loop"] == LOOP for entry in logs)
