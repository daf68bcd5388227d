"""Background tasks always stop, even when a library swallows a cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from conftest import background_errors
from zvonok_agi.routing.model import Account
from zvonok_agi.store.routing_data import RoutingCache, RoutingData
from zvonok_agi.tasks import LoopErrors, cancel_and_wait, run_every

FAILED = "background loop step failed; going on"
AGAIN = "background loop working again"


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


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


# ---- loops that ride out a failed step --------------------------------------------------------


def test_loop_errors_are_counted_each_and_logged_at_most_once_a_minute() -> None:
    now = [1000.0]
    errors = LoopErrors("test-flapping", clock=lambda: now[0])
    before = background_errors("test-flapping")
    with capture_logs() as logs:
        for second in range(0, 150, 10):  # fails and recovers every 10 s for 150 s
            now[0] = 1000.0 + second
            errors.failed(RuntimeError(f"at {second}"))
            now[0] += 5
            errors.succeeded()
    assert background_errors("test-flapping") == before + 15
    assert [(entry["event"], entry.get("error")) for entry in logs] == [
        (FAILED, "RuntimeError('at 0')"),
        (AGAIN, None),
        (FAILED, "RuntimeError('at 60')"),
        (AGAIN, None),
        (FAILED, "RuntimeError('at 120')"),
        (AGAIN, None),
    ]
    assert [entry["unlogged"] for entry in logs if entry["event"] == FAILED] == [0, 5, 5]
    assert all(entry["log_level"] == "error" for entry in logs if entry["event"] == FAILED)


async def test_run_every_goes_on_after_failures_and_stops_when_cancelled() -> None:
    steps: list[str] = []

    async def step() -> None:
        steps.append("step")
        if len(steps) <= 3:
            raise ConnectionError("peer away")  # expected: a warning

    with capture_logs() as logs:
        task = asyncio.create_task(run_every(0.001, step, LoopErrors("test-run-every")))
        await until(lambda: len(steps) >= 6)
        await asyncio.wait_for(cancel_and_wait(task), timeout=5)
    assert task.cancelled()
    assert [entry["event"] for entry in logs] == [FAILED, AGAIN]
    assert logs[0]["log_level"] == "warning" and "exc_info" not in logs[0]


async def test_the_routing_cache_rides_out_a_corrupt_version_and_follows_again(
    redis, settings
) -> None:
    # Someone writes garbage over the version with redis-cli: every load fails, not with a
    # store error. The engine keeps its copy, says so, and follows again once it is mended.
    data = RoutingData(redis, settings.redis.key_prefix)
    await data.put_account(Account("before", verified=True))
    loops = {"routing-follow": 3}  # failures to wait for
    before = {loop: background_errors(loop) for loop in loops}
    cache = RoutingCache(data, refresh_interval=0.01)
    await cache.start()
    try:
        with capture_logs() as logs:
            await redis.set(data.version_key, b"garbage")
            await until(lambda: all(background_errors(k) >= before[k] + loops[k] for k in loops))
            assert "before" in cache.snapshot.accounts  # the last good copy stays
            await redis.set(data.version_key, 100)
            await data.put_account(Account("after", verified=True))
            await until(lambda: "after" in cache.snapshot.accounts)
            await until(lambda: {e["loop"] for e in logs if e["event"] == AGAIN} == set(loops))
    finally:
        await asyncio.wait_for(cache.stop(), timeout=5)
    for loop in loops:
        failures = [e for e in logs if e["event"] == FAILED and e["loop"] == loop]
        assert len(failures) == 1 and "garbage" in failures[0]["error"]
