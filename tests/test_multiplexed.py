"""The shared-connection client the inbound route uses, against real redis-server processes:
replies matched to their commands under concurrency and cancellation, scripts loaded again,
errors, timeouts and lost connections failing only the commands they hit, and the handshake
(password, database) on every new connection."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from redis_topology import RedisNode
from zvonok_agi.store.multiplexed import MultiplexedRedis, encode, multiplexed_client

ECHO = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
def node(tmp_path):
    server = RedisNode(tmp_path, [])
    server.start()
    yield server
    server.stop()


def client_for(url: str, timeout: float = 2.0) -> MultiplexedRedis:
    client = multiplexed_client(url, socket_timeout=timeout, connect_timeout=2.0)
    assert client is not None
    return client


def count_connects(client: MultiplexedRedis) -> list[int]:
    """How many connections the client opens from now on (one list item per connection)."""
    opened: list[int] = []
    open_connection = client._open

    async def counting(factory):
        opened.append(1)
        return await open_connection(factory)

    client._open = counting
    return opened


def test_encode_is_resp():
    assert encode(["HGETALL", "k"]) == b"*2\r\n$7\r\nHGETALL\r\n$1\r\nk\r\n"
    assert encode(["SET", "ключ", 7, 0.5, b"\x00"]) == (
        b"*5\r\n$3\r\nSET\r\n$8\r\n\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87\r\n$1\r\n7\r\n"
        b"$3\r\n0.5\r\n$1\r\n\x00\r\n"
    )


def test_no_shared_client_for_a_cluster():
    for url in ("redis+cluster://h:1", "rediss+cluster://h:1"):
        assert multiplexed_client(url, socket_timeout=1, connect_timeout=1) is None


async def test_concurrent_commands_get_their_own_replies_on_one_connection(settings, redis):
    keys = [f"{settings.redis.key_prefix}h{n}" for n in range(300)]
    for n, key in enumerate(keys):
        await redis.hset(key, mapping={"n": n, f"f{n}": "x" * n})
    client = client_for(settings.redis.url)
    opened = count_connects(client)
    try:
        replies = await asyncio.gather(*(client.hgetall(key) for key in keys))
        assert replies == [{b"n": str(n).encode(), f"f{n}".encode(): b"x" * n} for n in range(300)]
        assert await client.hgetall(f"{settings.redis.key_prefix}none") == {}
        assert len(opened) == 1
    finally:
        await client.aclose()


async def test_a_cancelled_command_does_not_shift_the_replies(settings, redis):
    key = f"{settings.redis.key_prefix}c"
    await redis.hset(key, "a", "1")
    client = client_for(settings.redis.url)
    try:
        await client.execute("PING")  # connected
        slow = asyncio.ensure_future(client.execute("DEBUG", "SLEEP", "0.2"))
        await asyncio.sleep(0.05)
        slow.cancel()
        after = await client.hgetall(key)
        assert after == {b"a": b"1"}
        assert slow.cancelled()
    finally:
        await client.aclose()


async def test_a_command_given_up_keeps_its_place_when_the_deadline_is_checked(settings, redis):
    # The deadline check runs while the given-up command's reply is still to come: that reply
    # must still be taken as its own, not as the next command's.
    key = f"{settings.redis.key_prefix}late"
    await redis.set(key, "mine")
    client = client_for(settings.redis.url, timeout=1.0)
    try:
        await client.execute("PING")
        given_up = asyncio.ensure_future(client.execute("DEBUG", "SLEEP", "1.3"))
        await asyncio.sleep(0.05)
        given_up.cancel()
        await asyncio.sleep(0.55)
        assert await client.execute("GET", key) == b"mine"  # answered after the sleep
    finally:
        await client.aclose()


async def test_a_script_the_server_lost_is_loaded_again(settings, redis):
    client = client_for(settings.redis.url)
    script = client.register_script(ECHO)
    try:
        await redis.script_flush()
        assert await script(keys=["k"], args=["v"]) == [b"k", b"v"]
        assert await redis.script_exists(script.sha) == [True]
        assert await script(keys=["k2"], args=[3]) == [b"k2", b"3"]
    finally:
        await client.aclose()


async def test_an_error_reply_fails_its_command_only(settings, redis):
    key = f"{settings.redis.key_prefix}s"
    await redis.set(key, "text")
    client = client_for(settings.redis.url)
    try:
        results = await asyncio.gather(
            client.hgetall(key), client.execute("GET", key), return_exceptions=True
        )
        assert isinstance(results[0], ResponseError) and "WRONGTYPE" in str(results[0])
        assert results[1] == b"text"
    finally:
        await client.aclose()


async def test_a_silent_server_fails_the_waiting_commands_then_a_new_connection_serves(node):
    client = client_for(node.url, timeout=0.3)
    opened = count_connects(client)
    try:
        assert await client.execute("PING") == b"PONG"
        node.process.send_signal(19)  # SIGSTOP: the server says nothing
        try:
            results = await asyncio.gather(
                client.execute("PING"), client.execute("PING"), return_exceptions=True
            )
        finally:
            node.process.send_signal(18)  # SIGCONT
        assert all(isinstance(r, RedisTimeoutError) for r in results)
        assert await client.execute("PING") == b"PONG"
        assert len(opened) == 2
    finally:
        await client.aclose()


async def test_a_restarted_server_is_reconnected_to(node):
    client = client_for(node.url)
    try:
        assert await client.execute("SET", "k", "v") == b"OK"
        node.stop()
        with pytest.raises(RedisConnectionError):
            await client.execute("GET", "k")
        node.start()
        assert await client.execute("PING") == b"PONG"
    finally:
        await client.aclose()


async def test_password_and_database_on_every_connection(node):
    password = uuid.uuid4().hex
    node.ask("config_set", "requirepass", password)
    url = f"redis://:{password}@127.0.0.1:{node.port}/3"
    other = aioredis.Redis.from_url(url)
    client = client_for(url)
    opened = count_connects(client)
    try:
        await other.set("where", "db3")
        assert await client.execute("GET", "where") == b"db3"
        # The server closes the idle connection (as on a restart or its idle timeout): the
        # next command opens another, with the handshake again.
        await other.client_kill_filter(_type="normal", skipme=True)
        await asyncio.sleep(0.2)
        assert await client.execute("GET", "where") == b"db3"
        assert len(opened) == 2
        bad = client_for(f"redis://:wrong@127.0.0.1:{node.port}/0")
        with pytest.raises(ResponseError):
            await bad.execute("PING")
        await bad.aclose()
    finally:
        await client.aclose()
        await other.aclose()
        async with aioredis.Redis.from_url(url) as admin:
            await admin.config_set("requirepass", "")  # for node.stop
