"""Several engine processes on one store, as behind several Asterisk boxes: the first-callback
claim stays exactly-once across them, on one Redis server and on a Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import free_port
from engine_helpers import CALLER, RESERVED, attempt, base_inventory, load
from zvonok_agi.agi.client import agi_call

ROOT = Path(__file__).resolve().parents[1]
NEVER_DIALED = "79990000000"


@contextlib.contextmanager
def engine_processes(settings, count: int, cwd: Path) -> Iterator[list[int]]:
    """`zvonok-agi serve` `count` times on the settings' store; yields their FastAGI ports."""
    ports = [free_port() for _ in range(count)]
    processes = []
    for port in ports:
        env = dict(
            os.environ,
            ZVONOK_REDIS_URL=settings.redis.url,
            ZVONOK_REDIS_KEY_PREFIX=settings.redis.key_prefix,
            ZVONOK_AGI_PORT=str(port),
            ZVONOK_LOG_FORMAT="json",
            ZVONOK_LOG_LEVEL="warning",
            PYTHONPATH=str(ROOT),
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "zvonok_agi", "serve"],
                env=env,
                cwd=cwd,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        yield ports
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            _, log = process.communicate(timeout=20)
            assert process.returncode == 0, log


async def routes_from_the_data(port: int) -> None:
    """Until the engine on `port` answers with the loaded routing data."""
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(OSError, TimeoutError):
                variables = await agi_call("127.0.0.1", port, RESERVED, NEVER_DIALED)
                if variables.get("ZV_CAMPAIGN") == "support":
                    return
            await asyncio.sleep(0.2)


@pytest.mark.parametrize("store", ["single", "cluster"])
async def test_fifty_callbacks_split_over_two_engine_processes_route_one_outbound(
    request, settings, tmp_path, store
):
    if store == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        settings = replace(settings, redis=replace(settings.redis, url=url))
    inventory = base_inventory()
    inventory["attempts"] = [attempt("spring-sale")]
    await load(settings, inventory)
    with engine_processes(settings, 2, tmp_path) as ports:
        await asyncio.gather(*(routes_from_the_data(port) for port in ports))
        results = await asyncio.gather(
            *(agi_call("127.0.0.1", ports[n % 2], RESERVED, CALLER) for n in range(50))
        )
    routes = [r["ZV_ROUTE"] for r in results]
    assert routes.count("outbound") == 1
    assert routes.count("inbound") == 49
    assert all(r["ZV_DECIDED"] == "1" for r in results)
