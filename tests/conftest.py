"""Shared fixtures: a real Redis server for the whole session, settings that point at it."""

from __future__ import annotations

import socket
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import settings as hypothesis_settings
from prometheus_client import REGISTRY

from redis_topology import Cluster, running
from zvonok_agi.app import redis_client
from zvonok_agi.config import Settings, load_settings
from zvonok_agi.store.connection import learn_topology
from zvonok_agi.store.embedded import EmbeddedRedis

SHARED = Path(__file__).resolve().parents[2] / "shared"

# Properties are checked, not timed: a loaded machine must not fail an example for its speed.
hypothesis_settings.register_profile("zvonok", deadline=None)
hypothesis_settings.load_profile("zvonok")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def background_errors(loop: str) -> float:
    """The failed steps the background loop `loop` has counted so far in this process."""
    return REGISTRY.get_sample_value("zvonok_background_errors_total", {"loop": loop}) or 0.0


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedRedis:
    """A real redis-server on a free loopback port, for the whole test session."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    """A real three-master Redis Cluster, started the first time a test asks for it."""
    with running(Cluster(tmp_path_factory.mktemp("cluster"))) as cluster:
        yield cluster


@pytest.fixture
def settings(redis_server: EmbeddedRedis) -> Settings:
    """Settings on the session's Redis, with a key prefix of their own (tests do not meet)."""
    base = load_settings(environ={})
    return replace(
        base,
        # No refusing calls for a lagging loop (test_health.py tests that): a busy test
        # machine must not close the engine's listener in the middle of a test.
        agi=replace(base.agi, port=0, overload_lag=0.0),
        redis=replace(base.redis, url=redis_server.url, key_prefix=f"t{uuid.uuid4().hex[:8]}:"),
    )


@pytest.fixture
async def redis(settings: Settings):
    client = aioredis.Redis.from_url(settings.redis.url)
    yield client
    await client.aclose()


@pytest.fixture(params=["single", "cluster"])
async def store(request: pytest.FixtureRequest, settings: Settings):
    """A client of the engine's kind, on the session's Redis and then on the cluster. Its
    timeouts are long: these tests are about what the store does, not about a busy machine
    (on a Cluster a timeout also drops the connections of the commands in flight)."""
    url = settings.redis.url
    if request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
    patient = replace(settings.redis, socket_timeout=5.0, connect_timeout=5.0)
    client = redis_client(url, replace(settings, redis=patient))
    await learn_topology(client)
    yield client
    await client.aclose()
