"""The engine's Redis connections are bounded: a burst of calls shares them and waits its turn."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from conftest import free_port
from engine_helpers import RESERVED, attempt, base_inventory, call, running_engine
from redis_topology import Replicated, running
from zvonok_agi.app import redis_client
from zvonok_agi.config import ConfigError, load_settings
from zvonok_agi.store.embedded import EmbeddedRedis

CALLERS = [f"7916{n:07d}" for n in range(1, 201)]


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own: its connection counts are this test's alone."""
    server = EmbeddedRedis(tmp_path, port=free_port())
    server.start()
    yield server
    server.stop()


async def connections_received(url: str) -> int:
    probe = aioredis.Redis.from_url(url)
    try:
        return int((await probe.info("stats"))["total_connections_received"])
    finally:
        await probe.aclose()


async def test_a_burst_of_calls_shares_a_few_connections(own_redis, settings):
    # Generous timeouts: the calls and the engine share this process's one core, and a loaded
    # machine must not send a call past its deadline (routed without the store) for it.
    settings = replace(
        settings,
        redis=replace(settings.redis, url=own_redis.url, max_connections=4, socket_timeout=20.0),
        agi=replace(settings.agi, session_deadline=30.0),
    )
    inventory = base_inventory()
    inventory["attempts"] = [attempt("spring-sale", callee=c) for c in CALLERS]
    async with running_engine(settings, inventory) as engine:
        await call(engine, RESERVED, "79990000000")  # the engine's connections are open
        before = await connections_received(own_redis.url)
        routes = await asyncio.gather(*(call(engine, RESERVED, c) for c in CALLERS))
        opened = await connections_received(own_redis.url) - before - 1  # less the probe
    # Every caller's first callback was claimed through the store, none routed without it.
    assert [v["ZV_ROUTE"] for v in routes] == ["outbound"] * len(CALLERS)
    assert opened <= 4


@pytest.fixture(params=["single", "sentinel"])
def redis_url(request, tmp_path):
    """A single server, or a master behind Sentinel: both bound their pool the same way."""
    if request.param == "single":
        server = EmbeddedRedis(tmp_path, port=free_port())
        server.start()
        yield server.url
        server.stop()
    else:
        with running(Replicated(tmp_path)) as setup:
            yield setup.url


async def test_a_command_waits_for_a_busy_pool_then_gives_up(redis_url):
    settings = load_settings(
        environ={
            "ZVONOK_REDIS_URL": redis_url,
            "ZVONOK_REDIS_MAX_CONNECTIONS": "2",
            "ZVONOK_REDIS_SOCKET_TIMEOUT": "0.2",
        }
    )
    client = redis_client(redis_url, settings)
    pool = client.connection_pool
    try:
        held = [await pool.get_connection() for _ in range(2)]  # both in use elsewhere
        # Past the bound a command waits: one released meanwhile serves it.
        waiting = asyncio.create_task(client.get("anything"))
        while not waiting.done() and not pool.waiting:
            await asyncio.sleep(0)
        assert not waiting.done()
        await pool.release(held[0])
        assert await waiting is None
        # With none released, it gives up at its timeout, and no connection was opened past
        # the bound.
        held[0] = await pool.get_connection()
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await client.get("anything")
        assert len(pool._in_use_connections) + len(pool._available_connections) == 2
        for connection in held:
            await pool.release(connection)
    finally:
        await client.aclose()


def test_the_pool_needs_room_for_the_follower_and_a_command():
    with pytest.raises(ConfigError, match="max_connections"):
        load_settings(environ={"ZVONOK_REDIS_MAX_CONNECTIONS": "1"})


async def test_waiting_commands_are_served_in_turn_and_one_given_up_passes_its_turn_on(own_redis):
    settings = load_settings(
        environ={"ZVONOK_REDIS_MAX_CONNECTIONS": "2", "ZVONOK_REDIS_SOCKET_TIMEOUT": "5"}
    )
    client = redis_client(own_redis.url, settings)
    pool = client.connection_pool
    try:
        held = [await pool.get_connection() for _ in range(2)]
        first = asyncio.create_task(client.get("first"))
        rest = [asyncio.create_task(client.get(f"key{n}")) for n in range(30)]
        while pool.waiting < 31:
            await asyncio.sleep(0)
        await pool.release(held[0])  # wakes `first`, which is cancelled before it runs
        first.cancel()
        await pool.release(held[1])
        assert await asyncio.gather(*rest) == [None] * 30
        assert first.cancelled()
        assert pool.waiting == 0
        assert len(pool._in_use_connections) + len(pool._available_connections) == 2
    finally:
        await client.aclose()


async def test_a_connection_the_server_dropped_is_replaced_on_the_next_command(own_redis, settings):
    """The command that finds its connection closed by Redis (a restart, CLIENT KILL) fails
    (the call is routed without the store); the next one gets a fresh connection."""
    client = redis_client(own_redis.url, settings)
    try:
        assert await client.client_setname("engine")
        probe = aioredis.Redis.from_url(own_redis.url)
        try:
            assert await probe.client_kill_filter(skipme=True, _type="normal") >= 1
        finally:
            await probe.aclose()
        await asyncio.sleep(0.05)  # the close reaches the client's socket
        with pytest.raises(RedisConnectionError):
            await client.get("anything")
        assert await client.get("anything") is None
        assert await client.client_getname() is None  # not the connection named before
    finally:
        await client.aclose()
