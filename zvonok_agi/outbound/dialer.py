"""A dialer process: takes callees from the campaigns' queues in Redis (outbound/queue.py) and
places their calls through one or more Asterisk hosts. Any number of them run at once, on any
boxes; every limit holds across all of them (outbound/pacing.py, the campaign's claim).

One call, in order:
1. room on a host (its lease; hosts whose AMI link is down get no calls) and on the trunk;
2. the claim on the callee, within the campaign's concurrency and calls per second, and its
   slot, waited for;
3. the trunk's next slot, waited for (last: the trunk's rate holds at the Originate);
4. the attempt recorded with the campaign's mark on the callee, in one step (store/history.py);
   a callee with a mark already is never dialed again: its call is followed instead;
5. the Originate, then its outcome (outbound/originator.py), counted in the campaign's
   progress with the entry acknowledged, in one step.
A step that finds no room leaves the callee with this dialer to try again shortly. A dialer
that is killed leaves its callees pending in Redis; another takes them over after
`claim_after` and goes through the same steps, where the mark decides: no mark, the callee was
never dialed and is dialed now; a mark, its call is followed (Asterisk still lists it) or
settled at once (it is over; the outcome is known if it reached the history).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import structlog
from redis.exceptions import RedisError

from ..ami.client import AMIClient
from ..ami.protocol import AMIError
from ..config import DialerHost, DialerSettings, OutboundSettings, Settings, dialer_hosts
from ..routing.callerid import PoolAtCapacity
from ..routing.model import CampaignState, Outcome
from ..store.history import AlreadyDialed, CallbackHistory
from ..store.routing_data import RoutingSnapshot
from ..tasks import LoopErrors, cancel_and_wait, run_every
from .originator import CampaignPaused, DialRefused, Originator, StoreUnavailable
from .pacing import Leases, Pace, release
from .queue import CampaignQueue, Entry

log = structlog.get_logger(__name__)

# A call takes a pacing slot at most this far ahead, and waits for it.
HORIZON = 1.0
# Callees read from a campaign's queue at a time (fewer when the dialer has less room).
READ_BATCH = 10
# Seconds before trying again: every usable pool number at its cap; no room on any host; the
# store away.
POOL_RETRY = 1.0
ROOM_RETRY = 0.05
STORE_RETRY = 0.5


def trunk_of(channel: str) -> str:
    """The trunk an Originate channel template goes out on: `PJSIP/{callee}@carrier` ->
    `PJSIP/carrier`; a template without `@` is its own trunk."""
    tech, _, rest = channel.partition("/")
    endpoint = rest.partition("@")[2]
    return f"{tech}/{endpoint}" if endpoint else channel


def host_leases(redis, prefix: str, host: DialerHost, ttl: float) -> Leases:
    return Leases(redis, f"{prefix}dialer:host:{{{host.name}}}:calls", host.capacity, ttl)


def trunk_limits(
    redis, prefix: str, outbound: OutboundSettings, settings: DialerSettings
) -> tuple[Leases, Pace]:
    """The calls at once and the calls per second of the trunk outbound.channel goes out on."""
    key = f"{prefix}dialer:trunk:{{{trunk_of(outbound.channel)}}}"
    return (
        Leases(redis, f"{key}:calls", settings.trunk_capacity, settings.claim_after),
        Pace(redis, f"{key}:pace", outbound.trunk_calls_per_second, HORIZON),
    )


@dataclass
class Host:
    """One Asterisk this dialer places calls through."""

    name: str
    originator: Originator
    leases: Leases

    @property
    def up(self) -> bool:
        return self.originator.ami.connected


@dataclass
class _Campaign:
    id: str
    held: deque[Entry] = field(default_factory=deque)  # taken, not being dialed now
    not_before: float = 0.0  # monotonic: no new call before
    empty: bool = False  # its queue had nothing new last time
    blocked: str | None = None  # why it may not dial now
    checked: RoutingSnapshot | None = None  # the routing data `blocked` was found in


@dataclass
class _Call:
    """A claimed call, until its outcome."""

    entry: Entry
    host: Host
    attempt_id: str
    trunk: bool  # holds a trunk lease


class Dialer:
    """Dials the queued callees of every campaign (or of `only` that one) until stopped."""

    def __init__(
        self,
        queue: CampaignQueue,
        history: CallbackHistory,
        routing: Callable[[], RoutingSnapshot],
        hosts: Sequence[Host],
        trunk: tuple[Leases, Pace],
        outbound: OutboundSettings,
        settings: DialerSettings,
        *,
        only: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not hosts:
            raise ValueError("a dialer needs at least one Asterisk host")
        self.queue = queue
        self.history = history
        self.routing = routing
        self.hosts = list(hosts)
        self.trunk_leases, self.trunk_pace = trunk
        self.outbound = outbound
        self.settings = settings
        self.only = only
        self.clock = clock
        self.placed = 0  # calls this dialer placed (Originates sent and not refused)
        self.paused: str | None = None  # why it dials nothing now, if it does not
        self.stopped_because: str | None = None  # `only` may no longer dial at all
        self._campaigns: dict[str, _Campaign] = {}
        self._calls: dict[str, _Call] = {}  # attempt id -> a call between claim and outcome
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()  # a call ended, or something else worth a look
        self._cursor = 0  # round robin over the campaigns
        self._next_host = 0  # round robin over the hosts
        self._room_after = 0.0  # no host or trunk had room: not before this
        self._errors = LoopErrors("dialer")

    # ---- the run ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, until_done: bool = False) -> None:
        """Dial until `stop` is set, or (`until_done`) until the campaigns have nothing left.
        Then the calls in flight end with their outcome, and the callees taken but not
        started go back to the queue for any dialer."""
        s = self.settings
        loops = [
            asyncio.create_task(
                run_every(s.heartbeat, self._heartbeat, LoopErrors("dialer-heartbeat")),
                name="dialer-heartbeat",
            ),
            asyncio.create_task(
                run_every(s.heartbeat, self._take_over, LoopErrors("dialer-takeover")),
                name="dialer-takeover",
            ),
        ]
        log.info("dialer started", worker=self.queue.worker, hosts=[h.name for h in self.hosts])
        try:
            await self._refresh()
            await self._dispatch(stop, until_done)
        finally:
            if self._tasks:
                await asyncio.wait(self._tasks)  # calls in flight end with their outcome
            await cancel_and_wait(*loops)
            await self._hand_back()
        log.info("dialer stopped", worker=self.queue.worker, placed=self.placed)

    async def _dispatch(self, stop: asyncio.Event, until_done: bool) -> None:
        """Claim callees one after the other (so a refusal is heard before the next try);
        each claimed call goes on in a task of its own."""
        refreshed = self.clock()
        while not stop.is_set() and not (until_done and self.stopped_because):
            if self.clock() - refreshed > self.settings.poll_interval * 5:
                await self._refresh()
                refreshed = self.clock()
            if len(self._tasks) >= self.settings.concurrency:
                await self._wait(stop, None)
                continue
            picked = await self._pick()
            if picked is None:
                if until_done and await self._done():
                    return
                await self._wait(stop, self._next_look())
                continue
            claimed = await self._claim(*picked)
            if claimed is not None:
                task = asyncio.create_task(self._call(*picked, *claimed), name="dialer-call")
                self._tasks.add(task)
                task.add_done_callback(self._call_ended)

    def _call_ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._changed.set()

    async def _wait(self, stop: asyncio.Event, timeout: float | None) -> None:
        """Until a call ends, `stop` is set, or `timeout` s pass."""
        self._changed.clear()
        stopped = asyncio.ensure_future(stop.wait())
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait([stopped, changed], timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            stopped.cancel()
            changed.cancel()

    def _next_look(self) -> float:
        """Seconds until a campaign may have a callee to dial (at most poll_interval)."""
        now = self.clock()
        ready = [
            max(c.not_before, self._room_after)
            for c in self._campaigns.values()
            if c.blocked is None and (c.held or not c.empty)
        ]
        soonest = min([*ready, now + self.settings.poll_interval])
        return min(max(soonest - now, 0.001), self.settings.poll_interval)

    async def _done(self) -> bool:
        """Whether the campaigns dialed (`only`) have nothing waiting and nothing in flight."""
        if self._tasks or any(c.held for c in self._campaigns.values()):
            return False
        try:
            progress = [await self.queue.progress(c) for c in self._campaigns]
        except RedisError:
            return False
        return all(p.finished for p in progress)

    # ---- which callee next --------------------------------------------------------------------

    async def _refresh(self) -> None:
        """The campaigns with callees queued (or just `only`)."""
        try:
            names = [self.only] if self.only else await self.queue.campaigns()
        except (RedisError, OSError) as exc:
            self._pause("store unavailable")
            self._errors.failed(exc)
            return
        for name in names:
            self._campaigns.setdefault(name, _Campaign(name))
        for name in list(self._campaigns):
            campaign = self._campaigns[name]
            if name not in names and not campaign.held and not self._in_flight(name):
                del self._campaigns[name]

    async def _pick(self) -> tuple[_Campaign, Entry] | None:
        """The next callee to dial: one per campaign in turn (a campaign with a million
        callees does not hold up one with ten), from campaigns that may dial now."""
        now = self.clock()
        if now < self._room_after:
            return None
        if not any(host.up for host in self.hosts):
            self._pause("AMI link down")
            return None
        campaigns = list(self._campaigns.values())
        for i in range(len(campaigns)):
            campaign = campaigns[(self._cursor + i) % len(campaigns)]
            if campaign.not_before > now or not self._may_dial(campaign):
                continue
            if not campaign.held and not await self._read(campaign, now):
                continue
            self._cursor = (self._cursor + i + 1) % len(campaigns)
            self._resume()
            return campaign, campaign.held.popleft()
        return None

    async def _read(self, campaign: _Campaign, now: float) -> bool:
        room = self.settings.concurrency - len(self._tasks)
        try:
            entries = await self.queue.read(campaign.id, max(min(READ_BATCH, room), 1))
        except (RedisError, OSError) as exc:
            self._pause("store unavailable")
            self._errors.failed(exc, campaign=campaign.id)
            campaign.not_before = now + STORE_RETRY
            return False
        campaign.held.extend(entries)
        campaign.empty = not entries
        if not entries:
            campaign.not_before = now + self.settings.poll_interval
        return bool(entries)

    def _may_dial(self, campaign: _Campaign) -> bool:
        """Whether the campaign may dial now (not paused, not refused by a rule), looked up
        again when the routing data changes; a change is logged once."""
        snapshot = self.routing()
        if snapshot is campaign.checked:
            return campaign.blocked is None
        campaign.checked = snapshot
        why = None
        try:
            self.hosts[0].originator.check_campaign(campaign.id)
        except DialRefused as exc:
            why = str(exc)
            if campaign.id == self.only:
                self.stopped_because = why
        else:
            known = snapshot.campaigns.get(campaign.id)
            if known is not None and known.state is CampaignState.PAUSED:
                why = "campaign paused"
        if why != campaign.blocked:
            if why is None:
                log.info("campaign may dial again", campaign=campaign.id)
            else:
                log.warning(
                    "campaign may not dial: its callees wait", campaign=campaign.id, why=why
                )
            campaign.blocked = why
        return why is None

    def why_idle(self, campaign: str) -> str | None:
        """Why this dialer places no call of `campaign` now, if it does not."""
        known = self._campaigns.get(campaign)
        return self.paused or (known.blocked if known is not None else None)

    def _in_flight(self, campaign: str) -> list[str]:
        return [e.entry.id for e in self._calls.values() if e.entry.campaign == campaign]

    def _hold(self, campaign: _Campaign, entry: Entry, delay: float = 0.0) -> None:
        """Keep `entry` to try again, first, in `delay` s."""
        campaign.held.appendleft(entry)
        campaign.not_before = max(campaign.not_before, self.clock() + delay)

    def _pause(self, why: str) -> None:
        if self.paused != why:
            log.warning(f"{why}: dialing paused", worker=self.queue.worker)
            self.paused = why

    def _resume(self) -> None:
        if self.paused is not None:
            log.info("dialing resumed", worker=self.queue.worker, was=self.paused)
            self.paused = None

    # ---- one call -----------------------------------------------------------------------------

    async def _claim(self, campaign: _Campaign, entry: Entry) -> tuple[_Call, float] | None:
        """Room on a host and the trunk, then the claim on the callee: the call, and the
        seconds until its slot; None if there is no room now (the callee is held)."""
        attempt_id = uuid.uuid4().hex
        host: Host | None = None
        trunk = False
        try:
            host = await self._room(attempt_id)
            trunk = host is not None and await self.trunk_leases.acquire(attempt_id)
            if host is None or not trunk:
                self._room_after = self.clock() + ROOM_RETRY
            else:
                claim = await self.queue.claim(
                    entry,
                    host=host.name,
                    attempt_id=attempt_id,
                    cps=self.outbound.calls_per_second,
                    concurrency=self.outbound.concurrency,
                    horizon=HORIZON,
                    now=time.time(),
                )
                if claim.wait is None:
                    call = self._calls[attempt_id] = _Call(entry, host, attempt_id, trunk)
                    return call, claim.delay
                campaign.not_before = self.clock() + max(claim.wait, ROOM_RETRY)
        except (RedisError, OSError) as exc:
            self._pause("store unavailable")
            self._errors.failed(exc, campaign=entry.campaign, callee=entry.callee)
            campaign.not_before = self.clock() + STORE_RETRY
        self._hold(campaign, entry)
        await self._release(attempt_id, host, trunk)
        return None

    async def _call(self, campaign: _Campaign, entry: Entry, call: _Call, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            await self._trunk_slot()
            await self._place(campaign, entry, call.host, call.attempt_id)
        except (RedisError, OSError, StoreUnavailable) as exc:
            # Tried again shortly: its claim is this dialer's to take over.
            self._pause("store unavailable")
            self._errors.failed(exc, campaign=entry.campaign, callee=entry.callee)
            self._hold(campaign, entry, STORE_RETRY)
        except Exception as exc:  # a defect: that callee is refused, the others go on
            self._errors.failed(exc, campaign=entry.campaign, callee=entry.callee)
            await self._finish(entry, None, f"not dialed: {exc!r}")
        finally:
            del self._calls[call.attempt_id]
            await self._release(call.attempt_id, call.host, call.trunk)

    async def _room(self, attempt_id: str) -> Host | None:
        """A host whose link is up and that has room for one more call (its lease taken)."""
        count = len(self.hosts)
        for i in range(count):
            host = self.hosts[(self._next_host + i) % count]
            if host.up and await host.leases.acquire(attempt_id):
                self._next_host = (self._next_host + i + 1) % count
                return host
        return None

    async def _trunk_slot(self) -> None:
        while (wait := await self.trunk_pace.take()) < 0:
            await asyncio.sleep(-wait)
        await asyncio.sleep(wait)

    async def _release(self, attempt_id: str, host: Host | None, trunk: bool) -> None:
        leases = [host.leases] if host is not None else []
        leases += [self.trunk_leases] if trunk else []
        try:
            await release(self.queue.redis, leases, attempt_id)
        except (RedisError, OSError) as exc:  # the leases end by themselves
            self._errors.failed(exc)

    async def _place(self, campaign: _Campaign, entry: Entry, host: Host, attempt_id: str) -> None:
        originator = host.originator
        try:
            attempt, caller_id = await originator.prepare(
                entry.campaign, entry.callee, attempt_id=attempt_id, via=host.name
            )
        except AlreadyDialed as placed:
            await self._follow(entry, placed)
            return
        except PoolAtCapacity:
            await self.queue.release(entry, attempt_id)
            self._hold(campaign, entry, POOL_RETRY)
            return
        except CampaignPaused:
            await self.queue.release(entry, attempt_id)
            self._hold(campaign, entry)  # the campaign's check holds it back meanwhile
            return
        except DialRefused as exc:
            if not self._may_dial(campaign):  # the campaign itself may no longer dial
                await self.queue.release(entry, attempt_id)
                self._hold(campaign, entry)
            else:
                await self._finish(entry, None, str(exc))
            return
        try:
            result = await originator.place(attempt, caller_id)
        except Exception as exc:  # a defect; the Originate may have gone out: never again
            self._errors.failed(exc, campaign=entry.campaign, callee=entry.callee)
            await self._finish(entry, Outcome.FAILED)
            return
        self.placed += result.dialed
        if result.retry:  # the link went before the Originate: another host takes it
            await self.queue.release(entry, attempt_id)
            self._hold(campaign, entry)
        elif not result.dialed:
            await self._finish(entry, None, result.detail)
        else:
            await self._finish(entry, result.outcome)

    async def _follow(self, entry: Entry, placed: AlreadyDialed) -> None:
        """The campaign's call to this callee was placed already (its dialer died or stalled):
        never dial it again; settle it from what is known, or follow it where it rings."""
        kept = await self.history.attempts(placed.did, entry.callee)
        attempt = next((a for a in kept if a.id == placed.attempt_id), None)
        if attempt is None:  # gone from the history: nothing more can be learned
            await self._finish(entry, Outcome.FAILED)
            return
        if attempt.outcome is not Outcome.PENDING:
            await self._finish(entry, attempt.outcome)
            return
        host = next((h for h in self.hosts if h.name == placed.via), None)
        if host is None or not host.up:
            if time.time() - attempt.at > self.outbound.outcome_timeout:
                log.warning(
                    "call placed on a host out of reach: settled as failed",
                    attempt=attempt.id,
                    host=placed.via,
                )
                await self.history.settle(attempt, Outcome.FAILED)
                await self._finish(entry, Outcome.FAILED)
            else:  # its outcome may still come: ask again later
                self._hold(self._campaigns[entry.campaign], entry, self.settings.heartbeat)
            return
        try:
            outcome, _ = await host.originator.adopt(attempt)
        except AMIError:
            self._hold(self._campaigns[entry.campaign], entry, self.settings.heartbeat)
            return
        await self._finish(entry, outcome)

    async def _finish(self, entry: Entry, outcome: Outcome | None, refused: str = "") -> None:
        """Count the callee's end in the campaign's progress (refused when `outcome` is None)
        and acknowledge its entry. If the store stays away, the entry is left to be taken
        over: the campaign's mark then settles it without a second call."""
        for delay in (0, 0.5, 2.0):
            await asyncio.sleep(delay)
            try:
                if outcome is None:
                    log.warning(
                        "callee refused",
                        campaign=entry.campaign,
                        callee=entry.callee,
                        reason=refused,
                    )
                    await self.queue.refuse(entry, refused)
                else:
                    await self.queue.settle(entry, outcome)
                return
            except (RedisError, OSError) as exc:
                self._errors.failed(exc, campaign=entry.campaign, callee=entry.callee)

    # ---- background -----------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Tell the other dialers this one still works on its callees; renew its leases."""
        for campaign in list(self._campaigns.values()):
            ids = [e.id for e in campaign.held] + self._in_flight(campaign.id)
            await self.queue.keep(campaign.id, ids)
        for host in self.hosts:
            await host.leases.renew(a for a, call in self._calls.items() if call.host is host)
        await self.trunk_leases.renew(list(self._calls))

    async def _take_over(self) -> None:
        """Take the callees of dialers gone silent; forget campaigns with nothing left."""
        for campaign in list(self._campaigns.values()):
            if campaign.blocked is not None:
                continue
            taken = await self.queue.take_over(campaign.id, self.settings.claim_after)
            if taken:
                log.warning(
                    "callees taken over from a silent dialer",
                    campaign=campaign.id,
                    callees=len(taken),
                )
                campaign.held.extend(taken)
                campaign.not_before = 0.0
                self._changed.set()
            elif (
                self.only is None
                and campaign.empty
                and not campaign.held
                and not self._in_flight(campaign.id)
                and await self.queue.forget_if_done(campaign.id)
            ):
                del self._campaigns[campaign.id]

    async def _hand_back(self) -> None:
        """Callees taken but not started go back to the queue, for any dialer; then this
        dialer leaves the campaigns' consumer groups."""
        for campaign in self._campaigns.values():
            while campaign.held:
                entry = campaign.held.popleft()
                try:
                    await self.queue.requeue(entry)
                except (RedisError, OSError) as exc:  # taken over after claim_after instead
                    self._errors.failed(exc, campaign=entry.campaign)
                    return
        for campaign_id in self._campaigns:
            try:
                await self.queue.drop_consumers(campaign_id)
            except (RedisError, OSError) as exc:  # left behind: dropped when the campaign ends
                self._errors.failed(exc, campaign=campaign_id)
                return


@contextlib.asynccontextmanager
async def open_dialer(
    redis,
    history: CallbackHistory,
    routing: Callable[[], RoutingSnapshot],
    settings: Settings,
    ami: Callable[[DialerHost], AMIClient],
    *,
    worker: str,
    only: str | None = None,
    rested: Callable[[], frozenset[str]] = frozenset,
) -> AsyncIterator[Dialer]:
    """A Dialer on every host of dialer.hosts, each link made by `ami` and started: it rides
    out its host being down. Everything is closed on the way out."""
    prefix = settings.redis.key_prefix
    async with contextlib.AsyncExitStack() as stack:
        hosts = []
        for address in dialer_hosts(settings):
            client = ami(address)
            client.start()
            stack.push_async_callback(client.close)
            originator = Originator(
                client,
                history,
                routing,
                settings.outbound,
                region=settings.routing.default_region,
                rested=rested,
                scenario_context=settings.dialplan.outbound_scenario_context,
            )
            await stack.enter_async_context(originator)
            leases = host_leases(redis, prefix, address, settings.dialer.claim_after)
            hosts.append(Host(address.name, originator, leases))
        yield Dialer(
            CampaignQueue(redis, prefix, worker=worker),
            history,
            routing,
            hosts,
            trunk_limits(redis, prefix, settings.outbound, settings.dialer),
            settings.outbound,
            settings.dialer,
            only=only,
        )
