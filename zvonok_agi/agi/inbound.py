"""The `inbound` AGI route: where does a call to one of our DIDs go?

Reads DID and caller from the env block, decides with the pure rules, claims the first callback
when the call goes to an outbound campaign, hands the route to the dialplan as channel variables
and returns (the server then closes the socket). One log line per call.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import structlog
from redis.exceptions import RedisError

from .. import phone
from ..config import DialplanSettings
from ..metrics import METRICS
from ..routing.decision import decide, fallback_without_store
from ..routing.model import Attempt, Decision, Fallback, Route, RouteKind
from ..store.history import CallbackHistory
from ..store.routing_data import RoutingCache, RoutingSnapshot
from . import variables as var
from .session import AGISession

log = structlog.get_logger(__name__)

MAX_REASON = 200


class InboundRouter:
    def __init__(
        self,
        cache: RoutingCache,
        history: CallbackHistory,
        dialplan: DialplanSettings,
        window: float,
        region: str = phone.DEFAULT_REGION,
        clock: Callable[[], float] = time.time,
        batch: bool = True,
    ) -> None:
        self.cache = cache
        self.history = history
        self.dialplan = dialplan
        self.window = window
        self.region = region
        self.clock = clock
        self.batch = batch  # set the variables with one EXEC MSet (see variables.batched)
        # Asterisk hosts that did not take an MSet: they get one SET VARIABLE each from then on.
        self.no_batch: set[str] = set()

    async def __call__(self, session: AGISession) -> None:
        started = time.perf_counter()
        assert session.env is not None
        env = session.env
        if env.tampered:
            did, caller = await self.did_from_channel(session), None
            log.warning("env block tampered: caller ignored, DID read from the channel", did=did)
        else:
            did, caller = self.parties(
                env.get("agi_extension"), env.get("agi_dnid"), env.get("agi_callerid")
            )
        snapshot = self.cache.snapshot
        number = snapshot.numbers.get(did) if did else None

        async def on_failure(why: str) -> None:
            decision = fallback_without_store(number, snapshot.campaigns)
            decision = _with_reason(decision, f"{why}: {decision.reason}")
            await self.send(session, decision, did, caller)
            self._log(did, caller, decision, started, failed=why)

        session.on_failure = on_failure
        decision = await self.decide(did, caller, snapshot)

        async def resend(why: str) -> None:
            # Decided (and maybe claimed) already: a late failure must not lose the route.
            await self.send(session, decision, did, caller)
            self._log(did, caller, decision, started, failed=why)

        session.on_failure = resend
        await self.send(session, decision, did, caller)
        self._log(did, caller, decision, started)

    def parties(self, extension: str, dnid: str, callerid: str) -> tuple[str | None, str | None]:
        """The DID (the extension, else the dialed number) and the caller, normalised."""
        did = phone.normalize(extension, self.region) or phone.normalize(dnid, self.region)
        return did, phone.normalize(callerid, self.region)

    async def did_from_channel(self, session: AGISession) -> str | None:
        """The DID as the channel holds it (the AGI runs in the DID's own extension), for when
        the env block cannot be believed."""
        reply = await session.command("GET FULL VARIABLE", "${EXTEN}")
        if reply.ok and reply.result == "1" and reply.data is not None:
            return phone.normalize(reply.data, self.region)
        return None

    async def decide(
        self,
        did: str | None,
        caller: str | None,
        snapshot: RoutingSnapshot,
        claim: bool = True,
    ) -> Decision:
        """The route; with `claim`, an outbound route is taken only if this call wins the
        first-callback claim (a dry run leaves the history untouched)."""
        number = snapshot.numbers.get(did) if did else None
        if snapshot.version < 0:
            return Decision(
                Route.to_fallback(Fallback.ENGINE_ERROR),
                "routing data not loaded",
                "routing_not_loaded",
            )
        if number is None or caller is None:
            return decide(number, snapshot.campaigns, (), self.clock(), self.window)
        try:
            attempts = await self.history.attempts(number.did, caller)
            decision = decide(number, snapshot.campaigns, attempts, self.clock(), self.window)
            route = decision.route
            if claim and route.kind is RouteKind.OUTBOUND:
                attempt = next(a for a in attempts if a.id == route.attempt)
                if not await self.history.claim(attempt):
                    # Another call from this caller claimed it first: decide as the loser.
                    attempts = [_claimed(a) if a.id == attempt.id else a for a in attempts]
                    decision = decide(
                        number, snapshot.campaigns, attempts, self.clock(), self.window
                    )
            return decision
        except (RedisError, OSError) as exc:
            METRICS.store_error("history")
            decision = fallback_without_store(number, snapshot.campaigns)
            return _with_reason(decision, f"{decision.reason} ({type(exc).__name__})")

    async def send(
        self, session: AGISession, decision: Decision, did: str | None, caller: str | None
    ) -> None:
        values = self.variables(decision, did, caller)
        host = session.peer.rpartition(":")[0]
        if self.batch and host not in self.no_batch:
            commands = var.batched(values)
            if commands is not None:
                for command in commands:
                    reply = await session.command(*command)
                if reply.result == "1" and reply.data == "1":  # DECIDED read back
                    return
                if reply.ok:  # Asterisk answered, without DECIDED (not a channel gone dead)
                    self.no_batch.add(host)
                    log.warning(
                        "MSet did not set the variables: one SET VARIABLE each for this "
                        "Asterisk from now on (res_agi compatibility in asterisk.conf?)",
                        asterisk=host,
                    )
        for command in var.one_by_one(values):
            await session.command(*command)

    def commands(
        self, decision: Decision, did: str | None, caller: str | None
    ) -> list[var.Command]:
        """What `send` says to Asterisk for a decision (when MSet works)."""
        values = self.variables(decision, did, caller)
        return (self.batch and var.batched(values)) or var.one_by_one(values)

    def variables(
        self, decision: Decision, did: str | None, caller: str | None
    ) -> list[tuple[str, str]]:
        """The channel variables that realise a decision, ZV_DECIDED last. Every one is set,
        empty ones too: the dialplan clears only ZV_DECIDED before the AGI, so an empty value
        must overwrite whatever the channel held (an earlier AGI run, an inherited variable)."""
        route = decision.route
        if route.kind is RouteKind.OUTBOUND:
            context = self.dialplan.outbound_context.format(campaign=route.campaign)
        elif route.kind is RouteKind.INBOUND:
            context = self.dialplan.inbound_context.format(campaign=route.campaign)
        else:
            assert route.fallback is not None
            context = self.dialplan.fallback_context.format(fallback=route.fallback.value)
        return [
            (var.ROUTE, route.kind.value),
            (var.CAMPAIGN, route.campaign or ""),
            (var.ATTEMPT, route.attempt or ""),
            (var.FALLBACK, route.fallback.value if route.fallback else ""),
            (var.TARGET_CONTEXT, context),
            (var.TARGET_EXTEN, self.dialplan.extension),
            (var.REASON, decision.reason[:MAX_REASON]),
            (var.DID, did or ""),
            (var.CALLER, caller or ""),
            (var.DECIDED, "1"),
        ]

    def _log(
        self,
        did: str | None,
        caller: str | None,
        decision: Decision,
        started: float,
        failed: str | None = None,
    ) -> None:
        route = decision.route
        seconds = time.perf_counter() - started
        METRICS.call_routed(
            route.kind.value,
            route.fallback.value if route.fallback else None,
            decision.code,
            seconds,
        )
        log.info(
            "call routed",
            did=did,
            caller=caller,
            route=route.kind.value,
            campaign=route.campaign,
            fallback=route.fallback.value if route.fallback else None,
            reason=decision.reason,
            failed=failed,
            latency_ms=round(seconds * 1000, 3),
        )


async def send_engine_error(router: InboundRouter, session: AGISession, why: str) -> None:
    """The server's generic fallback: no handler knew better."""
    decision = Decision(
        Route.to_fallback(Fallback.ENGINE_ERROR), why or "engine error", "engine_failure"
    )
    await router.send(session, decision, None, None)


def _claimed(attempt: Attempt) -> Attempt:
    return dataclasses.replace(attempt, callbacks=attempt.callbacks + 1)


def _with_reason(decision: Decision, reason: str) -> Decision:
    return dataclasses.replace(decision, reason=reason)
