"""Redis stopped under load: every call still gets a route in time; routing resumes after."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from conftest import free_port
from engine_helpers import RESERVED, attempt, base_inventory, call, running_engine
from zvonok_agi.store.embedded import EmbeddedRedis

CALLERS = [f"7916{n:07d}" for n in range(1, 301)]


async def test_calls_keep_routing_while_redis_is_down_and_resume_after(tmp_path, settings):
    redis_server = EmbeddedRedis(tmp_path, port=free_port())
    redis_server.start()
    settings = replace(settings, redis=replace(settings.redis, url=redis_server.url))
    inventory = base_inventory()
    inventory["attempts"] = [attempt("spring-sale", callee=c) for c in CALLERS]
    results: list[tuple[str, dict[str, str], float]] = []

    async def placed(phase: str, caller: str) -> None:
        started = time.monotonic()
        variables = await call(engine, RESERVED, caller)
        results.append((phase, variables, time.monotonic() - started))

    try:
        async with running_engine(settings, inventory) as engine:
            phase = "up"
            calls = []
            for i, caller in enumerate(CALLERS[:240]):  # 240 calls at 200 calls/s
                if i == 60:
                    await asyncio.to_thread(redis_server.stop)
                    phase = "down"
                calls.append(asyncio.create_task(placed(phase, caller)))
                await asyncio.sleep(0.005)
            await asyncio.gather(*calls)
            await asyncio.to_thread(redis_server.start)
            after = [await call(engine, RESERVED, caller) for caller in CALLERS[240:250]]
    finally:
        redis_server.stop()

    deadline = settings.agi.session_deadline
    assert all(v["ZV_DECIDED"] == "1" for _, v, _ in results)
    assert max(latency for _, _, latency in results) < deadline
    up = [v for phase, v, _ in results if phase == "up"]
    down = [v for phase, v, _ in results if phase == "down"]
    assert {v["ZV_ROUTE"] for v in up} == {"outbound"}
    # Without the store the number's bound inbound campaign is still known.
    late_down = down[len(down) // 2:]
    assert {(v["ZV_ROUTE"], v["ZV_CAMPAIGN"]) for v in late_down} == {("inbound", "support")}
    assert all("store" in v["ZV_REASON"] for v in late_down)
    # Redis is back: callbacks are recognised again, with no restart of the engine.
    assert [v["ZV_ROUTE"] for v in after] == ["outbound"] * 10
