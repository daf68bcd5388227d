"""Redis over TLS, end to end: a real redis-server that speaks only TLS on its port and asks
every client for a certificate (tests/redis_tls.py), the engine and the tools reaching it with
the redis.tls_* settings, on one server, through Sentinel and on a Cluster."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis_tls import Authority, ServerTLS, authority, tls_binary
from structlog.testing import capture_logs
from test_cli import DEMO, ROOT, run_cli

from engine_helpers import (
    RESERVED,
    attempt,
    base_inventory,
    call,
    follows_a_routing_change,
    running_engine,
)
from redis_topology import HOST, Cluster, RedisNode, Replicated, running
from zvonok_agi.app import redis_client
from zvonok_agi.config import Settings
from zvonok_agi.store.connection import TLS
from zvonok_agi.store.multiplexed import multiplexed_client

CALLERS = [f"7916{n:07d}" for n in range(1, 11)]


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ServerTLS:
    return ServerTLS.made(tls_binary(), authority(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    """An authority the engine does not know."""
    return authority(tmp_path_factory.mktemp("stranger"), "another CA")


@pytest.fixture(scope="module")
def tls_server(server_tls: ServerTLS, tmp_path_factory: pytest.TempPathFactory) -> RedisNode:
    with running(RedisNode(tmp_path_factory.mktemp("tls-redis"), [], tls=server_tls)) as node:
        yield node


def over_tls(settings: Settings, url: str, tls: TLS) -> Settings:
    redis = replace(
        settings.redis,
        url=url,
        tls_ca_file=tls.ca_file,
        tls_cert_file=tls.cert_file,
        tls_key_file=tls.key_file,
        tls_check_hostname=tls.check_hostname,
    )
    return replace(settings, redis=redis)


def callbacks() -> dict:
    inventory = base_inventory()
    inventory["attempts"] = [attempt("spring-sale", callee=caller) for caller in CALLERS]
    return inventory


async def routes_a_callback_once_and_follows_changes(settings: Settings) -> None:
    """The history read, the first-callback claim and a routing change published now, on the
    settings' Redis: the first callback goes to the campaign that dialed, the second to the
    number's inbound campaign, and the engine sees the change."""
    async with running_engine(settings, callbacks()) as engine:
        first = await call(engine, RESERVED, CALLERS[0])
        again = await call(engine, RESERVED, CALLERS[0])
        await follows_a_routing_change(settings, engine)
    assert (first["ZV_ROUTE"], first["ZV_CAMPAIGN"]) == ("outbound", "spring-sale")
    assert (again["ZV_ROUTE"], again["ZV_CAMPAIGN"]) == ("inbound", "support")


async def test_the_engine_routes_calls_and_follows_changes_over_tls(
    settings, tls_server, server_tls
):
    url = f"rediss://localhost:{tls_server.port}/0"
    await routes_a_callback_once_and_follows_changes(over_tls(settings, url, server_tls.engine()))


@pytest.mark.parametrize("topology", [Replicated, Cluster])
async def test_the_engine_reaches_sentinel_and_cluster_over_tls(
    settings, server_tls, tmp_path: Path, topology
):
    """rediss+sentinel:// (the sentinels, and the master they name, on TLS) and
    rediss+cluster://."""
    with running(topology(tmp_path, tls=server_tls)) as setup:
        assert setup.url.startswith(("rediss+sentinel://", "rediss+cluster://"))
        settings = over_tls(settings, setup.url, server_tls.engine())
        await routes_a_callback_once_and_follows_changes(settings)


async def test_the_shared_connection_speaks_tls(settings, tls_server, server_tls):
    url = f"rediss://{HOST}:{tls_server.port}/0"
    tls = server_tls.engine()
    client = multiplexed_client(url, socket_timeout=2.0, connect_timeout=2.0, tls=tls)
    assert client is not None
    try:
        assert await client.execute("PING") == b"PONG"
    finally:
        await client.aclose()


async def test_a_server_signed_by_an_unknown_authority_is_refused_clearly(
    settings, tls_server, server_tls, stranger
):
    wrong = replace(server_tls.engine(), ca_file=str(stranger.ca))
    settings = over_tls(settings, f"rediss://localhost:{tls_server.port}/0", wrong)
    with capture_logs() as logs:
        async with running_engine(settings) as engine:
            assert not engine.cache.loaded
            assert engine.refusing is not None  # Asterisk's dialplan takes its fallback
    (failed,) = [e for e in logs if e["event"].startswith("routing data not loaded")]
    assert "certificate verify failed" in failed["error"]

    client = multiplexed_client(settings.redis.url, socket_timeout=2, connect_timeout=2, tls=wrong)
    try:
        with pytest.raises(RedisConnectionError, match="TLS certificate refused.*tls_ca_file"):
            await client.execute("PING")
    finally:
        await client.aclose()


async def test_calls_get_a_route_while_the_server_shows_a_certificate_not_trusted(
    settings, server_tls, stranger, tmp_path
):
    """The server's certificate replaced by one from an authority the engine does not trust
    (a rotation the engine's CA file missed): every call is still routed, without the store,
    and routing by history comes back with the trusted certificate."""
    node = RedisNode(tmp_path, ["appendonly yes"], tls=server_tls)  # keeps the history
    untrusted = ServerTLS.made(server_tls.binary, stranger)
    settings = over_tls(settings, f"rediss://localhost:{node.port}/0", server_tls.engine())
    try:
        node.start()
        async with running_engine(settings, callbacks()) as engine:
            await asyncio.to_thread(node.stop)
            node.tls = untrusted
            await asyncio.to_thread(node.start)
            during = [await call(engine, RESERVED, caller) for caller in CALLERS[:5]]
            await asyncio.to_thread(node.stop)
            node.tls = server_tls
            await asyncio.to_thread(node.start)
            after = [await call(engine, RESERVED, caller) for caller in CALLERS[5:]]
    finally:
        node.stop()
    for variables in during:
        assert (variables["ZV_ROUTE"], variables["ZV_CAMPAIGN"]) == ("inbound", "support")
        assert "store unavailable" in variables["ZV_REASON"]
    assert [v["ZV_ROUTE"] for v in after] == ["outbound"] * 5


async def test_a_certificate_for_another_name_is_refused_unless_the_name_check_is_off(
    settings, server_tls, tmp_path
):
    cert, key = server_tls.authority.signed("elsewhere", names=("DNS:redis.example.net",))
    strict = server_tls.engine()
    lax = replace(strict, check_hostname=False)
    with running(RedisNode(tmp_path, [], tls=replace(server_tls, cert=cert, key=key))) as node:
        url = f"rediss://{HOST}:{node.port}/0"
        client = redis_client(url, over_tls(settings, url, strict))
        try:
            with pytest.raises(RedisConnectionError, match="IP address mismatch"):
                await client.ping()
        finally:
            await client.aclose()
        client = redis_client(url, over_tls(settings, url, lax))
        shared = multiplexed_client(url, socket_timeout=2, connect_timeout=2, tls=lax)
        try:
            assert await client.ping()
            assert await shared.execute("PING") == b"PONG"
        finally:
            await client.aclose()
            await shared.aclose()


async def test_a_plain_client_on_the_tls_port_fails_at_once(settings, tls_server):
    url = f"redis://{HOST}:{tls_server.port}/0"
    client = redis_client(url, settings)
    shared = multiplexed_client(url, socket_timeout=2, connect_timeout=2)
    try:
        with pytest.raises(RedisConnectionError, match="reset by peer|closed"):
            await client.ping()
        with pytest.raises(RedisConnectionError, match="reset by peer|closed"):
            await shared.execute("PING")
    finally:
        await client.aclose()
        await shared.aclose()


async def test_a_tls_client_on_a_plain_port_gives_up_at_the_connect_timeout(
    settings, redis_server, server_tls
):
    """A plain server waits for the end of a line that never comes: the TLS handshake gets no
    answer, and the connection attempt ends at redis.connect_timeout."""
    url = f"rediss://{HOST}:{redis_server.port}/0"
    client = redis_client(url, over_tls(settings, url, server_tls.engine()))
    try:
        with pytest.raises(RedisTimeoutError, match="Timeout connecting"):
            await client.ping()
    finally:
        await client.aclose()


async def test_a_client_without_a_certificate_is_refused(settings, tls_server, server_tls):
    url = f"rediss://{HOST}:{tls_server.port}/0"
    anonymous = TLS(server_tls.engine().ca_file)
    client = redis_client(url, over_tls(settings, url, anonymous))
    try:
        # TLS 1.3 refuses a missing client certificate after the client's handshake is done:
        # the first read finds the server's alert, or the reset when it closed before that.
        with pytest.raises(RedisConnectionError, match="certificate required|reset by peer"):
            await client.ping()
    finally:
        await client.aclose()


def test_the_tools_take_the_tls_settings_from_the_environment(
    settings, tls_server, server_tls, stranger, tmp_path
):
    """`load` (the control plane's store and its publisher), `sync` and `route`, as an operator
    runs them: the URL and the TLS files in ZVONOK_REDIS_* variables."""
    tls = server_tls.engine()
    env = dict(
        os.environ,
        ZVONOK_REDIS_URL=f"rediss://localhost:{tls_server.port}/0",
        ZVONOK_REDIS_TLS_CA_FILE=tls.ca_file,
        ZVONOK_REDIS_TLS_CERT_FILE=tls.cert_file,
        ZVONOK_REDIS_TLS_KEY_FILE=tls.key_file,
        ZVONOK_REDIS_KEY_PREFIX=settings.redis.key_prefix,
        ZVONOK_ADMIN_DB_PATH=str(tmp_path / "zvonok.db"),
        PYTHONPATH=str(ROOT),
    )
    loaded = run_cli("load", str(DEMO), env=env, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    synced = run_cli("sync", env=env, cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr
    args = ("route", "--did", "74951234567", "--caller", "79161234567")
    routed = run_cli(*args, env=env, cwd=tmp_path)
    assert "route     outbound campaign spring-sale" in routed.stdout, routed.stderr

    refused = run_cli(*args, env=dict(env, ZVONOK_REDIS_TLS_CA_FILE=str(stranger.ca)), cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.startswith("zvonok-agi: Redis: ")
    assert "certificate verify failed" in refused.stderr
