"""Dialers on the test's Redis and fake AMI peers: settings, a running Dialer, what was dialed."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine_helpers import RESERVED, base_inventory
from fake_ami import FakeAMI
from zvonok_agi.ami.client import AMIClient
from zvonok_agi.app import redis_client
from zvonok_agi.config import DialerHost, Settings
from zvonok_agi.outbound.dialer import Dialer, open_dialer
from zvonok_agi.outbound.originator import Originator
from zvonok_agi.routing.model import CampaignState
from zvonok_agi.store.history import CallbackHistory
from zvonok_agi.store.routing_data import RoutingData, RoutingSnapshot

CAMPAIGN = "spring-sale"
ROOT = Path(__file__).resolve().parents[1]


def callees(n: int, start: int = 0) -> list[str]:
    return [f"7900100{i:04d}" for i in range(start, start + n)]


def inventory(**options: Any) -> dict:
    """base_inventory with spring-sale dialing from acme's reserved number (no per-minute cap)."""
    inv = base_inventory(**options)
    inv["campaigns"][0]["caller_id"] = RESERVED
    return inv


def dialed(*fakes: FakeAMI) -> Counter[str]:
    """How many Originates the fakes received for each callee, all together."""
    return Counter(
        (action.get("Channel") or "").partition("/")[2].partition("@")[0]
        for fake in fakes
        for action in fake.originates
    )


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def dialing_settings(settings: Settings, fakes: Iterable[FakeAMI], **dialer: Any) -> Settings:
    """Dial through `fakes`; heartbeats and take-overs quick; the trunk out of the way."""
    options: dict[str, Any] = {"heartbeat": 0.2, "claim_after": 1.0, "poll_interval": 0.02}
    options.update(dialer)
    hosts = tuple(f"127.0.0.1:{fake.port}" for fake in fakes)
    return replace(
        settings,
        dialer=replace(settings.dialer, hosts=hosts, **options),
        outbound=replace(settings.outbound, trunk_calls_per_second=10_000.0),
    )


def ami_client(host: DialerHost) -> AMIClient:
    return AMIClient(
        host.host,
        host.port,
        "lab",
        "labsecret",
        events="call",
        event_names=Originator.EVENTS,
        ping_interval=None,
        action_timeout=2.0,
        connect_timeout=2.0,
        reconnect_base=0.02,
        reconnect_cap=0.1,
    )


class Routing:
    """The routing data a dialer sees; a test changes it as the control plane would."""

    def __init__(self, snapshot: RoutingSnapshot) -> None:
        self.snapshot = snapshot

    def __call__(self) -> RoutingSnapshot:
        return self.snapshot

    def set_state(self, campaign: str, state: CampaignState) -> None:
        campaigns = dict(self.snapshot.campaigns)
        campaigns[campaign] = replace(campaigns[campaign], state=state)
        self.snapshot = replace(self.snapshot, campaigns=campaigns)


@contextlib.asynccontextmanager
async def running_dialer(
    settings: Settings,
    *,
    worker: str = "w1",
    only: str | None = None,
    routing: Routing | None = None,
) -> AsyncIterator[Dialer]:
    """A Dialer on `settings` (see dialing_settings), its links logged in."""
    client = redis_client(settings.redis.url, settings, settings.dialer.concurrency + 20)
    prefix = settings.redis.key_prefix
    try:
        history = CallbackHistory(client, prefix, settings.routing.callback_window)
        routing = routing or Routing(await RoutingData(client, prefix).load())
        async with open_dialer(
            client, history, routing, settings, ami_client, worker=worker, only=only
        ) as dialer:
            await eventually(lambda: all(host.up for host in dialer.hosts), 5.0)
            yield dialer
    finally:
        await client.aclose()


def command_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `zvonok-agi` command on the test's Redis, AMI user lab."""
    return dict(
        os.environ,
        ZVONOK_REDIS_URL=settings.redis.url,
        ZVONOK_REDIS_KEY_PREFIX=settings.redis.key_prefix,
        ZVONOK_AMI_USERNAME="lab",
        ZVONOK_AMI_SECRET="labsecret",
        ZVONOK_LOG_FORMAT="json",
        PYTHONPATH=str(ROOT),
        **extra,
    )
