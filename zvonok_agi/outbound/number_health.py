"""A dialer's view of number health: every `refresh` seconds it reads the pool's counts from
Redis, applies the rule (routing/health.py), rests and brings back numbers there, and keeps the
set of resting numbers that its caller-ID choice reads (memory only: no round trip per call).

Every dialer process runs one; the store's scripts make each rest and return happen once, and
the process that made it writes the audit line (log event `number rested` / `number back`,
`audit=true`, and an entry in the control plane's audit log through Redis) and counts it in
`zvonok_number_health_changes_total`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import structlog

from ..config import HealthSettings, Settings
from ..metrics import METRICS
from ..routing.health import HealthRule, Review, review
from ..routing.model import NumberStatus
from ..store.connection import Client
from ..store.number_health import NumberHealthStore
from ..store.routing_data import RoutingSnapshot
from ..tasks import LoopErrors, run_every

log = structlog.get_logger(__name__)


class PoolHealth:
    def __init__(
        self,
        store: NumberHealthStore,
        rule: HealthRule,
        routing: Callable[[], RoutingSnapshot],
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.rule = rule
        self.routing = routing
        self.enabled = enabled  # False: counts are kept and shown, no number rests
        self.clock = clock
        self.rested: frozenset[str] = frozenset()

    def pool(self) -> list[str]:
        numbers = self.routing().service_pool.values()
        return sorted(n.did for n in numbers if n.status is NumberStatus.ACTIVE)

    async def refresh(self) -> Review:
        """One look at the pool: rests and returns made now, and the resting set updated."""
        now = self.clock()
        pool = self.pool()
        health = await self.store.read(pool, now)
        counts = {did: h.counts for did, h in health.items()}
        until = {did: h.rested_until for did, h in health.items() if h.rested_until is not None}
        # With resting off nothing is judged (the counts are still kept); rests end as usual.
        rule = self.rule if self.enabled else replace(self.rule, max_rested_share=0.0)
        result = review(pool, counts, until, now, rule)
        for did in sorted(result.back):
            if await self.store.bring_back(did, now):
                await self._changed(did, "back", now, rate=counts[did].rate, until=until[did])
        for did, rest_until in sorted(result.rest.items()):
            if await self.store.rest(did, rest_until, now):
                await self._changed(
                    did, "rested", now, rate=counts[did].rate, until=rest_until,
                    median=result.median, placed=counts[did].placed,
                )  # fmt: skip
        still = {did for did, end in until.items() if end > now}
        self.rested = frozenset(still | set(result.rest))
        METRICS.numbers_rested(len(self.rested))
        return result

    async def run(self, interval: float) -> None:
        await run_every(interval, self.refresh, LoopErrors("number-health"))

    async def _changed(self, did: str, event: str, now: float, **detail: object) -> None:
        METRICS.number_health_change(event)
        log.warning(f"number {event}", audit=True, did=did, **detail)
        await self.store.log_event(did, event, now, **detail)


def health_rule(settings: HealthSettings) -> HealthRule:
    return HealthRule(
        fraction=settings.fraction,
        min_placed=settings.min_placed,
        max_rested_share=settings.max_rested_share,
        cooldown=settings.cooldown_hours * 3600.0,
    )


def health_store(redis: Client, settings: Settings) -> NumberHealthStore:
    return NumberHealthStore(redis, settings.redis.key_prefix, settings.health.window_hours * 3600)


def pool_health(
    redis: Client, settings: Settings, routing: Callable[[], RoutingSnapshot]
) -> PoolHealth:
    h = settings.health
    return PoolHealth(health_store(redis, settings), health_rule(h), routing, enabled=h.enabled)
