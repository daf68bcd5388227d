"""What the engine leaves to Python's garbage collector, whose passes run on the event loop:
a call leaves nothing for it, the routing data and the process's start are frozen out of its
way, and what the first calls would pay for once is done before the server listens."""

from __future__ import annotations

import argparse
import asyncio
import gc
from collections import Counter

import pytest

from engine_helpers import CALLER, RESERVED, base_inventory, call, running_engine
from zvonok_agi import app, cli
from zvonok_agi.agi.client import recorded_environment
from zvonok_agi.agi.protocol import encode_environment


def cyclic_garbage() -> list[object]:
    """What a full pass of the collector finds unreachable now (kept for inspection)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def engine_side(garbage: list[object], port: int) -> Counter:
    """The engine's objects among the garbage: its package's, and the sockets of its port (the
    client's sockets live in this process too)."""
    found: Counter = Counter()
    for thing in garbage:
        kind = type(thing)
        if kind.__module__.startswith("zvonok_agi."):
            found[kind.__qualname__] += 1
        elif hasattr(thing, "get_extra_info") and (thing.get_extra_info("sockname") or ())[1:2] == (
            port,
        ):
            found[kind.__qualname__] += 1
    return found


async def quiet_asterisk(port: int) -> None:
    """Sends the env block, reads the first command, hangs up: the session fails and its
    fallback runs."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode_environment(recorded_environment(RESERVED, CALLER)))
    await reader.readline()
    writer.close()


async def test_a_call_leaves_nothing_for_the_collector(settings):
    """Each call's objects go when it ends, not at the next full pass of the collector."""
    async with running_engine(settings, base_inventory()) as engine:
        port = engine.server.port
        await call(engine, RESERVED, CALLER)  # first-use caches filled
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                await call(engine, RESERVED, CALLER)
            await quiet_asterisk(port)
            while engine.server.connections:  # the failed session's clean-up
                await asyncio.sleep(0.01)
            garbage = cyclic_garbage()
        finally:
            gc.enable()
    assert engine_side(garbage, port) == Counter()


async def test_the_engine_freezes_its_routing_data_before_it_listens(settings, monkeypatch):
    """The first load with the collector paused (nothing to serve yet); a reload with it on."""
    frozen: list[tuple[bool, bool]] = []
    engines: list[app.Engine] = []

    def freeze() -> None:
        server = engines[0].server
        frozen.append((server is not None and server.listening, gc.isenabled()))

    monkeypatch.setattr(gc, "freeze", freeze)
    engine = app.Engine(settings, own_process=True)
    engines.append(engine)
    async with engine:
        assert engine.server.listening
        await engine.cache.reload()  # as after a gap in the changes, while serving
    assert frozen == [(False, False), (True, True)]
    assert gc.isenabled()


@pytest.mark.parametrize("shared", [True, False], ids=["shared_connection", "pool"])
async def test_the_engine_of_serve_opens_its_redis_connections_before_it_listens(
    settings, monkeypatch, shared
):
    """The calls' commands share one connection, or (a Cluster, TLS) take the pool's."""
    monkeypatch.setattr(gc, "freeze", lambda: None)
    if not shared:
        monkeypatch.setattr(app, "multiplexed_client", lambda *args, **kwargs: None)
    listening: list[bool] = []
    opened: list[int] = []
    engines: list[app.Engine] = []
    open_connections = app.open_connections

    async def opening(client, count: int) -> None:
        listening.append(engines[0].server.listening)
        await open_connections(client, count)
        if shared:
            opened.append(int(client._wire is not None and not client._wire.lost))
        else:
            pool = client.connection_pool
            opened.append(len(pool._available_connections) + len(pool._in_use_connections))

    monkeypatch.setattr(app, "open_connections", opening)
    engine = app.Engine(settings, own_process=True)
    engines.append(engine)
    async with engine:
        pass
    assert listening == [False]
    assert opened == [1 if shared else settings.redis.max_connections]  # the follower's too


async def test_an_engine_of_its_own_process_only_freezes(settings, monkeypatch):
    monkeypatch.setattr(gc, "freeze", lambda: pytest.fail("froze a test's heap"))
    async with running_engine(settings, base_inventory()) as engine:
        await engine.cache.reload()


async def test_the_first_calls_costs_are_paid_before_the_server_listens(settings, monkeypatch):
    listening: list[bool] = []
    engines: list[app.Engine] = []
    monkeypatch.setattr(app, "warm_up", lambda: listening.append(engines[0].server.listening))
    engine = app.Engine(settings)
    engines.append(engine)
    async with engine:
        assert engine.server.listening
    assert listening == [False]


def test_serve_settles_the_heap_before_the_event_loop_runs(settings, monkeypatch):
    settled: list[bool] = []

    def settle() -> None:
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        settled.append(True)

    monkeypatch.setattr(app, "settle_heap", settle)
    coroutine = cli._serve(settings, argparse.Namespace(admin=False))
    assert settled == [True]
    coroutine.close()
