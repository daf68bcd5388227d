"""The `inbound` AGI route: where does a call to one of our DIDs go?

Reads DID and caller from the env block, decides with the pure rules, claims the first callback
when the call goes to an outbound campaign, hands the route to the dialplan as channel variables
and returns (the server then closes the socket).

A claim stands only once Asterisk confirmed the route that used it (ZV_DECIDED read back, or
its SET VARIABLE answered): a call that failed, ran out of time or lost Asterisk on the way gives
it back, so the subscriber's next callback still reaches the campaign. Every call ends with
exactly one `call routed` line, failures included.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from redis.exceptions import RedisError

from .. import phone
from ..config import DialplanSettings
from ..metrics import METRICS
from ..routing.decision import decide, fallback_without_store
from ..routing.model import Attempt, Decision, Fallback, Number, Route, RouteKind
from ..store.history import CallbackHistory
from ..store.routing_data import RoutingCache, RoutingSnapshot
from . import variables as var
from .protocol import AGIProtocolError
from .session import FALLBACK_GRACE, AGIClosed, AGISession, SessionFailed

log = structlog.get_logger(__name__)

MAX_REASON = 200
MSET_MISSES_TO_SWITCH = 3  # MSet misses in a row before a host gets one SET VARIABLE each


@dataclass
class Claim:
    """A call's first-callback claim: made in the name of `token`; `attempt` is the one it
    holds (or may hold: the store can fail after the claim took)."""

    attempt: Attempt | None = None

    @functools.cached_property
    def token(self) -> str:
        """Unique to the call among every engine's: this process's random prefix, a count."""
        return f"{_TOKEN_PREFIX}{next(_TOKEN_COUNT)}"


_TOKEN_PREFIX = uuid.uuid4().hex[:16]
_TOKEN_COUNT = itertools.count()


@dataclass
class _Call:
    did: str | None
    caller: str | None
    number: Number | None
    snapshot: RoutingSnapshot
    started: float
    claim: Claim = field(default_factory=Claim)
    decision: Decision | None = None
    logged: bool = False


class BatchPolicy:
    """Which Asterisk hosts get the route's variables in one EXEC MSet.

    A host whose Asterisk answers MSet without setting ZV_DECIDED (res_agi compatibility in
    asterisk.conf) MSET_MISSES_TO_SWITCH times in a row gets one SET VARIABLE per variable;
    `retry_after` seconds later one of its calls tries MSet again, and one that works brings
    the host back. A reply that is not an answer (a dead channel) counts for nothing.
    """

    def __init__(self, retry_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after = retry_after
        self.clock = clock
        self._misses: dict[str, int] = {}  # host -> misses in a row
        self._retry_at: dict[str, float] = {}  # host switched to one by one -> next MSet try

    def use_batch(self, host: str) -> bool:
        retry_at = self._retry_at.get(host)
        if retry_at is None:
            return True
        now = self.clock()
        if now < retry_at:
            return False
        self._retry_at[host] = now + self.retry_after  # one try per interval
        return True

    def worked(self, host: str) -> None:
        self._misses.pop(host, None)
        if self._retry_at.pop(host, None) is not None:
            log.info("MSet sets the variables again: back to one MSet per call", asterisk=host)

    def missed(self, host: str) -> None:
        misses = self._misses[host] = self._misses.get(host, 0) + 1
        if misses == MSET_MISSES_TO_SWITCH:
            self._retry_at[host] = self.clock() + self.retry_after
            log.warning(
                "MSet did not set the variables: one SET VARIABLE each for this Asterisk, "
                "MSet tried again later (res_agi compatibility in asterisk.conf?)",
                asterisk=host,
                misses=misses,
                retry_after=self.retry_after,
            )

    def batching(self, host: str) -> bool:
        """Whether the host is on MSet now (for tests and status)."""
        return host not in self._retry_at


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
        batch_retry: float = 300.0,
    ) -> None:
        self.cache = cache
        self.history = history
        self.dialplan = dialplan
        self.window = window
        self.region = region
        self.clock = clock
        self.batch = batch  # set the variables with one EXEC MSet (see variables.batched)
        self.batching = BatchPolicy(batch_retry)
        # The `call routed` line's logger, bound once: through the module's proxy every line
        # would bind a new one (a third of the line's cost). Logging is configured before.
        self._calls_log = log.bind()

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
        call = _Call(did, caller, number, snapshot, started)
        session.on_failure = functools.partial(self._fail, session, call)
        call.decision = await self._decide(number, caller, snapshot, call.claim)
        if not await self.send(session, call.decision, did, caller):
            raise SessionFailed("Asterisk did not confirm the route")
        await self._end(call, call.decision, confirmed=True)

    async def _fail(self, session: AGISession, call: _Call, why: str) -> None:
        """The session failed (`why`): send the route again, or the route without the store if
        none was decided, give back a claim it did not confirm, and log the call."""
        if call.logged:
            return
        decision = call.decision
        if decision is None:
            decision = fallback_without_store(call.number, call.snapshot.campaigns)
            decision = _with_reason(decision, f"{why}: {decision.reason}")
        confirmed = False
        if not session.closed:
            try:
                async with asyncio.timeout(FALLBACK_GRACE):
                    confirmed = await self.send(session, decision, call.did, call.caller)
            except (AGIClosed, AGIProtocolError, OSError, TimeoutError) as exc:
                log.warning("fallback route not sent", error=repr(exc))
        await self._end(call, decision, confirmed, failed=why)

    async def _end(
        self, call: _Call, decision: Decision, confirmed: bool, failed: str | None = None
    ) -> None:
        """Give back a claim unless Asterisk took the route made with it; the call's line."""
        held = call.claim.attempt
        released = False
        if held is not None and not (confirmed and decision.route.attempt == held.id):
            try:
                released = await self.history.release(held, call.claim.token)
            except (RedisError, OSError) as exc:
                METRICS.store_error("history")
                log.error("claim not given back", attempt=held.id, error=repr(exc))
        call.logged = True
        self._log(call, decision, confirmed, failed, released)

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
        claim: Claim | None = None,
    ) -> Decision:
        """The route. With a `claim`, an outbound route is taken only if this call wins the
        first-callback claim, made in its name; without, a dry run: nothing is written."""
        number = snapshot.numbers.get(did) if did else None
        return await self._decide(number, caller, snapshot, claim)

    async def _decide(
        self,
        number: Number | None,
        caller: str | None,
        snapshot: RoutingSnapshot,
        claim: Claim | None = None,
    ) -> Decision:
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
            if claim is not None and route.kind is RouteKind.OUTBOUND:
                attempt = claim.attempt = next(a for a in attempts if a.id == route.attempt)
                if not await self.history.claim(attempt, claim.token):
                    claim.attempt = None
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
    ) -> bool:
        """Set the route's variables; True once Asterisk confirmed them: ZV_DECIDED read back
        after an MSet, or its SET VARIABLE answered `200 result=1`."""
        values = self.variables(decision, did, caller)
        host = session.host
        if self.batch and self.batching.use_batch(host):
            commands = var.batched(values)
            if commands is not None:
                for command in commands:
                    reply = await session.command(*command)
                if reply.result == "1" and reply.data == "1":  # DECIDED read back
                    self.batching.worked(host)
                    return True
                if reply.ok:  # Asterisk answered, without DECIDED (not a channel gone dead)
                    self.batching.missed(host)
        confirmed = False
        for command in var.one_by_one(values):  # ZV_DECIDED last
            reply = await session.command(*command)
            confirmed = reply.ok and reply.result == "1"
        return confirmed

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
        generic = ""
        if route.kind is RouteKind.OUTBOUND:
            context = self.dialplan.outbound_context.format(campaign=route.campaign)
            generic = self.dialplan.outbound_scenario_context
        elif route.kind is RouteKind.INBOUND:
            context = self.dialplan.inbound_context.format(campaign=route.campaign)
            generic = self.dialplan.inbound_scenario_context
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
            *var.scenario_values(route.scenario, generic),
            (var.DECIDED, "1"),
        ]

    def _log(
        self,
        call: _Call,
        decision: Decision,
        confirmed: bool,
        failed: str | None = None,
        claim_released: bool = False,
    ) -> None:
        route = decision.route
        seconds = time.perf_counter() - call.started
        METRICS.call_routed(
            route.kind.value,
            route.fallback.value if route.fallback else None,
            decision.code if confirmed else "not_confirmed",
            seconds,
        )
        self._calls_log.info(
            "call routed",
            did=call.did,
            caller=call.caller,
            route=route.kind.value,
            campaign=route.campaign,
            attempt=route.attempt,
            fallback=route.fallback.value if route.fallback else None,
            reason=decision.reason,
            failed=failed,
            confirmed=confirmed,
            claim_released=claim_released,
            latency_ms=round(seconds * 1000, 3),
        )


async def send_engine_error(router: InboundRouter, session: AGISession, why: str) -> None:
    """The server's generic fallback (no handler knew better): engine_error, and the call's
    line."""
    env = session.env
    assert env is not None
    did, caller = router.parties(
        env.get("agi_extension"), env.get("agi_dnid"), env.get("agi_callerid")
    )
    if env.tampered:
        did = caller = None  # not to be believed, even in a log line
    snapshot = router.cache.snapshot
    number = snapshot.numbers.get(did) if did else None
    call = _Call(did, caller, number, snapshot, time.perf_counter())
    call.decision = Decision(
        Route.to_fallback(Fallback.ENGINE_ERROR), why or "engine error", "engine_failure"
    )
    await router._fail(session, call, why)


def _claimed(attempt: Attempt) -> Attempt:
    return dataclasses.replace(attempt, callbacks=attempt.callbacks + 1)


def _with_reason(decision: Decision, reason: str) -> Decision:
    return dataclasses.replace(decision, reason=reason)
