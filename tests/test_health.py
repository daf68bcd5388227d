"""Whether the engine takes calls: the rule (`Admission`) on its own, then a real engine that
closes its FastAGI listener while it cannot route calls (no routing data yet, an overloaded
event loop), so that Asterisk is refused and goes to the next engine at once, and listens
again when it can."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from conftest import free_port
from engine_helpers import RESERVED, base_inventory, call, running_engine
from zvonok_agi.config import ConfigError, load_settings
from zvonok_agi.health import TICK, Admission, Heartbeat
from zvonok_agi.store.embedded import EmbeddedRedis


class Beats:
    """Heartbeats fed to an `Admission`: one per TICK, each as late as told."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.now = 0.0

    def __call__(self, lags: list[float]) -> list[bool]:
        """Whether overloaded after each beat."""
        seen = []
        for lag in lags:
            self.now += TICK + lag
            self.admission.observe(self.now, lag)
            seen.append(self.admission.overloaded)
        return seen


def test_sustained_lag_is_overload_and_a_single_pause_is_not():
    admission = Admission(lag=0.5, late_for=1.0, recovery=5.0)
    beats = Beats(admission)
    assert beats([1.9, 0.0, 0.0, 1.9, 0.0]) == [False] * 5  # pauses, each alone
    assert beats([0.6, 0.6]) == [False, False]  # late for 0.7 s only
    assert beats([0.6]) == [True]  # late for 1.4 s
    assert admission.refusal(routing_loaded=True) == "event loop overloaded"


def test_overload_ends_only_after_the_loop_kept_up_for_the_recovery_time():
    admission = Admission(lag=0.5, late_for=1.0, recovery=5.0)
    beats = Beats(admission)
    beats([0.6, 0.6, 0.6])
    # On time for 4.8 s, one late beat, then on time again: the 5 s start over.
    assert all(beats([0.0] * 49))
    assert beats([0.6]) == [True]
    seen = beats([0.0] * 60)
    assert seen.index(False) in (50, 51)  # 5 s after the first beat on time (give or take
    assert not any(seen[51:])  # the sum of the floats)
    assert admission.refusal(routing_loaded=True) is None


def test_no_routing_data_refuses_and_a_zero_lag_limit_never_does():
    admission = Admission(lag=0.0, late_for=1.0, recovery=5.0)
    assert Beats(admission)([10.0] * 20) == [False] * 20
    assert admission.refusal(routing_loaded=False) == "routing data not loaded"
    assert admission.refusal(routing_loaded=True) is None


async def test_a_failing_listener_does_not_stop_the_heartbeat():
    heartbeat = Heartbeat(interval=0.01)
    seen: list[float] = []
    heartbeat.listeners += [lambda now, lag: 1 / 0, lambda now, lag: seen.append(lag)]
    with capture_logs() as logs:
        heartbeat.start()
        await asyncio.sleep(0.1)
        heartbeat.stop()
    assert len(seen) >= 3
    assert {entry["event"] for entry in logs} == {"heartbeat listener failed"}


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


async def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_the_engine_listens_only_once_the_routing_data_is_loaded(tmp_path, settings):
    redis_server = EmbeddedRedis(tmp_path, port=free_port())  # not started yet
    settings = replace(
        settings,
        agi=replace(settings.agi, port=free_port()),
        redis=replace(settings.redis, url=redis_server.url, refresh_interval=0.2),
    )
    try:
        with capture_logs() as logs:
            async with running_engine(settings) as engine:
                assert engine.server is not None
                assert engine.refusing == "routing data not loaded"
                assert refused(settings.agi.port)  # Asterisk moves on to the next engine
                await asyncio.to_thread(redis_server.start)
                await wait_until(lambda: engine.server.listening)
                variables = await call(engine, RESERVED, "79161234567")
                assert variables["ZV_DECIDED"] == "1"
                assert engine.refusing is None
    finally:
        redis_server.stop()
    events = [entry["event"] for entry in logs]
    assert "fastagi not listening until the routing data is loaded" in events
    assert events.index("fastagi taking calls again") < events.index("fastagi listening")


async def test_an_overloaded_engine_refuses_calls_then_takes_them_again(settings):
    settings = replace(
        settings,
        agi=replace(
            settings.agi,
            port=free_port(),
            overload_lag=0.03,
            overload_for=0.3,
            overload_recovery=0.5,
        ),
    )
    async with running_engine(settings, base_inventory()) as engine:
        assert engine.server is not None and engine.server.listening

        def busy(now: float, lag: float) -> None:
            time.sleep(TICK * 1.5)  # every beat holds the loop: the next one comes late

        with capture_logs() as logs:
            engine.heartbeat.listeners.append(busy)
            await wait_until(lambda: not engine.server.listening)
            assert refused(settings.agi.port)
            assert engine.refusing == "event loop overloaded"
            engine.heartbeat.listeners.remove(busy)
            refused_at = time.monotonic()
            await wait_until(lambda: engine.server.listening)
            assert time.monotonic() - refused_at >= 0.5  # the recovery time, not at once
        variables = await call(engine, RESERVED, "79161234567")
        assert variables["ZV_DECIDED"] == "1"
    refusing = [e for e in logs if e["event"] == "fastagi refusing calls"]
    assert [e["reason"] for e in refusing] == ["event loop overloaded"]


@pytest.mark.parametrize("lag", [0.5, 2.0])
def test_an_overload_lag_the_watchdog_would_end_first_is_refused(lag):
    environ = {"ZVONOK_AGI_OVERLOAD_LAG": str(lag), "ZVONOK_WATCHDOG_TIMEOUT": "0.5"}
    with pytest.raises(ConfigError, match="overload_lag must be shorter than watchdog.timeout"):
        load_settings(environ=environ)
    load_settings(environ={**environ, "ZVONOK_WATCHDOG_ENABLED": "false"})
