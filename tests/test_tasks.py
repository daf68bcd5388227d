"""Background tasks always stop, even when a library swallows a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from zvonok_agi.routing.model import Account
from zvonok_agi.store.routing_data import RoutingCache, RoutingData
from zvonok_agi.tasks import cancel_and_wait


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    # What redis-py does now and then when a cancellation meets a command in flight
    # (redis/redis-py#2028): the command completes and the CancelledError is gone.
    swallowed = 0

    async def loop_that_rides_out_errors() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed == 0:
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(loop_that_rides_out_errors())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), timeout=5)
    assert task.cancelled()
    assert swallowed == 1


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)

    async def caller() -> str:
        child = asyncio.create_task(slow_to_stop())
        await asyncio.sleep(0.001)
        await cancel_and_wait(child)
        return "kept running"

    task = asyncio.create_task(caller())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)


async def test_a_failed_task_is_reported_not_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait(task, None)
    assert isinstance(task.exception(), RuntimeError)


async def test_routing_cache_stops_every_time_on_a_real_redis(redis, settings) -> None:
    # Regression: stop() hung forever when a reload in flight swallowed the cancellation
    # (CI: two engine tests timed out after 120 s). Stop it right as it reloads, many times.
    data = RoutingData(redis, settings.redis.key_prefix)
    for round_ in range(40):
        cache = RoutingCache(data, refresh_interval=0.01)
        await cache.start()
        await data.put_account(Account(f"a{round_}", verified=True))  # a reload starts
        for _ in range(round_ % 5):
            await asyncio.sleep(0)
        await asyncio.wait_for(cache.stop(), timeout=5)
