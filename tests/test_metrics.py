"""The Prometheus endpoint serves the documented series, scraped over HTTP."""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import replace

from conftest import free_port
from engine_helpers import RESERVED, attempt, base_inventory, call, running_engine
from fake_ami import FakeAMI
from zvonok_agi.cli import _dialer
from zvonok_agi.metrics import start_metrics_server


async def scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())


def value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


async def test_engine_and_dialer_series(settings):
    settings = replace(
        settings,
        metrics=replace(settings.metrics, enabled=True, port=free_port(), runner_port=free_port()),
        agi=replace(settings.agi, env_deadline=0.2),
    )
    inventory = base_inventory()
    inventory["attempts"] = [attempt("spring-sale")]
    stop_metrics = start_metrics_server("127.0.0.1", settings.metrics.port)
    try:
        before = await scrape(settings.metrics.port)
        async with running_engine(settings, inventory) as engine:
            await call(engine, RESERVED, "79161234567")
            await call(engine, "74990000000", "79161234567")
            assert engine.server is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", engine.server.port)
            assert await reader.read() == b""  # sent nothing: closed after env_deadline
            writer.close()
        after = await scrape(settings.metrics.port)
        async with FakeAMI(cases={"79001112233": "busy"}) as fake:
            dialing = replace(
                settings,
                ami=replace(settings.ami, port=fake.port, username="lab", secret="labsecret"),
            )
            async with _dialer(dialing) as dialer:
                await dialer.dial("pool-promo", "79001112233")
                during = await scrape(settings.metrics.runner_port)
    finally:
        stop_metrics()

    outbound = 'zvonok_calls_routed_total{fallback="",reason="first_callback",route="outbound"}'
    unknown = (
        'zvonok_calls_routed_total{fallback="unknown_number",reason="unknown_did",route="fallback"}'
    )
    assert value(after, outbound) - value(before, outbound) == 1
    assert value(after, unknown) - value(before, unknown) == 1
    assert (
        value(after, "zvonok_decision_seconds_count")
        - value(before, "zvonok_decision_seconds_count")
        == 2
    )
    idle = 'zvonok_fastagi_connections_dropped_total{why="no_env_block"}'
    assert value(after, idle) - value(before, idle) == 1
    assert "zvonok_store_errors_total" in after or "# TYPE zvonok_store_errors" in after
    assert value(during, 'zvonok_originates_total{outcome="busy"}') >= 1
    assert value(during, "zvonok_ami_link_up") == 1
    assert value(during, "zvonok_numbers_rested") == 0  # the dialer looked at the pool's health
    assert "# TYPE zvonok_number_health_changes_total counter" in during


def test_per_call_series_are_counted_only_while_an_endpoint_serves_them(monkeypatch):
    from prometheus_client import REGISTRY

    from zvonok_agi.metrics import METRICS

    def routed() -> float:
        labels = {"route": "inbound", "fallback": "", "reason": "metrics_test"}
        return REGISTRY.get_sample_value("zvonok_calls_routed_total", labels) or 0.0

    monkeypatch.setattr(METRICS, "per_call", False)  # no endpoint: nobody could read them
    METRICS.call_routed("inbound", None, "metrics_test", 0.001)
    assert routed() == 0
    monkeypatch.setattr(METRICS, "per_call", True)  # as start_metrics_server sets it
    METRICS.call_routed("inbound", None, "metrics_test", 0.001)
    METRICS.call_routed("inbound", None, "metrics_test", 0.001)
    assert routed() == 2
