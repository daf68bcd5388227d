"""The campaigns' queues of callees in Redis, shared by every dialer process.

Layout (prefix `zv:` by default). The part in braces is the Redis Cluster hash tag: every key
of one campaign lives in one slot, so each script below touches one slot.
  dialer:{<campaign>}:queue     stream of the callees to dial, one entry each (field `c`),
                                read by the consumer group `dialers` (one consumer a process)
  dialer:{<campaign>}:queued    set of every callee ever queued (a callee is queued once)
  dialer:{<campaign>}:calls     hash, callee -> JSON {worker, host, attempt, entry, since}: the
                                calls being placed now (claimed, outcome not yet known)
  dialer:{<campaign>}:counts    hash: queued, invalid (not a number: never queued), refused,
                                and one count per outcome
  dialer:{<campaign>}:refused   hash, callee -> why it was refused
  dialer:{<campaign>}:settings  hash: cps, concurrency (else the dialers' defaults)
  dialer:{<campaign>}:pace      when the campaign's next call may start (ms, Redis's clock)
  dialer:campaigns              set of the campaigns with callees queued (their own slots)

A callee's way: queued (XADD) -> read by a dialer (XREADGROUP; it is then pending with that
dialer, who refreshes it every heartbeat) -> claimed (CLAIM: within the campaign's concurrency
and calls per second, recorded in `calls`) -> its attempt recorded with the campaign's mark on
the callee (see store/history.py: from then on it is never dialed again) -> Originate ->
settled (SETTLE: out of `calls`, counted, XACK'd in the same step). A dialer that dies leaves
its entries pending; another takes them over (XAUTOCLAIM) once idle for `claim_after`. A
consumer that holds nothing is dropped from the group when its dialer stops, and every such
consumer when the campaign is done, so that dialers killed over months leave no trail.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from .. import phone
from ..routing.model import Outcome

GROUP = "dialers"
OUTCOMES = tuple(o for o in Outcome if o is not Outcome.PENDING)

# Queues the callees not queued before; callees that are not numbers are counted and kept
# with their reason instead. Returns how many were queued.
# KEYS: queue, queued, counts, refused. ARGV: group, number of callees n, n callees, then
# pairs (what was given, why it is refused).
ENQUEUE = """
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
local n = tonumber(ARGV[2])
local added = 0
for i = 3, n + 2 do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[1], '*', 'c', ARGV[i])
    added = added + 1
  end
end
if added > 0 then redis.call('HINCRBY', KEYS[3], 'queued', added) end
for i = n + 3, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[4], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('HINCRBY', KEYS[3], 'invalid', 1)
  end
end
return added
"""

# A dialer takes a callee: {'ok', ms to wait for its slot, the record it replaced or ''} or
# {'wait', ms before asking again, ''} (at the concurrency, or no slot within the horizon).
# A callee already being placed (its dialer died, or took too long) is taken over: it is not
# counted twice against the concurrency. The slots are spaced 1/cps apart, on Redis's clock.
# KEYS: calls, settings, pace. ARGV: callee, record JSON, default cps, default concurrency,
# horizon (ms).
CLAIM = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local previous = redis.call('HGET', KEYS[1], ARGV[1])
local settings = redis.call('HMGET', KEYS[2], 'cps', 'concurrency')
local cps = tonumber(settings[1]) or tonumber(ARGV[3])
local concurrency = tonumber(settings[2]) or tonumber(ARGV[4])
if not previous and redis.call('HLEN', KEYS[1]) >= concurrency then
  return {'wait', '0', ''}
end
local interval = 1000 / cps
local slot = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now)
if slot - now > tonumber(ARGV[5]) then
  return {'wait', tostring(math.ceil(slot - now - tonumber(ARGV[5]))), ''}
end
redis.call('SET', KEYS[3], tostring(slot + interval), 'PX', math.ceil(interval) + 60000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {'ok', tostring(math.ceil(slot - now)), previous or ''}
"""

# The callee's call has its outcome (or was refused): the entry is acknowledged and out of
# `calls`, and counted if this acknowledged it (of two dialers settling one callee, the
# second counts nothing). Returns 1 if counted.
# KEYS: queue, calls, counts, refused. ARGV: group, entry id, callee, count ('refused' or an
# outcome), why it was refused ('' otherwise).
SETTLE = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[3])
if acked == 0 then return 0 end
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
if ARGV[4] == 'refused' then redis.call('HSET', KEYS[4], ARGV[3], ARGV[5]) end
return 1
"""

# The claimed call was not placed (no room, the link went, a passing refusal): out of
# `calls` if it is still this attempt's claim. The entry stays with its dialer, to try again.
# KEYS: calls. ARGV: callee, attempt id.
RELEASE = """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if record and cjson.decode(record).attempt == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# A dialer that stops hands an entry it has not claimed back to the queue, for any dialer.
# KEYS: queue. ARGV: group, entry id, callee.
REQUEUE = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('XADD', KEYS[1], '*', 'c', ARGV[3])
end
return 1
"""

# One consistent reading: {counts as a flat list, calls being placed, settings as a flat list}.
# KEYS: counts, calls, settings.
PROGRESS = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HLEN', KEYS[2]),
        redis.call('HGETALL', KEYS[3])}
"""


# Drops consumers of the group that hold no entry, so that the group does not keep one consumer
# per dialer process that ever ran. Looked at and dropped in one step: an entry read meanwhile
# would otherwise be dropped with its consumer (DELCONSUMER forgets its pending entries).
# KEYS: queue. ARGV: group, then the consumers' names (none: every consumer). Returns how many.
DROP_CONSUMERS = """
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local wanted = {}
for i = 2, #ARGV do wanted[ARGV[i]] = true end
local dropped = 0
for _, consumer in ipairs(consumers) do
  local fields = {}
  for i = 1, #consumer, 2 do fields[consumer[i]] = consumer[i + 1] end
  if fields['pending'] == 0 and (#ARGV == 1 or wanted[fields['name']]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
    dropped = dropped + 1
  end
end
return dropped
"""

@dataclass(frozen=True)
class Entry:
    """One queued callee, as a dialer read it."""

    campaign: str
    id: str
    callee: str


@dataclass(frozen=True)
class Claim:
    """A dialer's claim on a callee: `delay` s until its slot; `wait` (the claim was refused)
    s before asking again; `replaced`, the claim of a dialer that had it before."""

    delay: float = 0.0
    wait: float | None = None
    replaced: dict[str, str] | None = None


@dataclass(frozen=True)
class Progress:
    campaign: str
    queued: int = 0  # callees ever queued (each once)
    invalid: int = 0  # given but not a phone number: refused, never queued
    refused: int = 0  # queued, then refused (a rule forbade the call, Asterisk refused it)
    dialing: int = 0  # being placed now
    outcomes: dict[Outcome, int] = field(default_factory=dict)
    cps: float | None = None  # the campaign's own settings, if set
    concurrency: int | None = None

    @property
    def done(self) -> int:
        return sum(self.outcomes.values())

    @property
    def waiting(self) -> int:
        """Queued, not yet claimed by a dialer."""
        return max(self.queued - self.refused - self.done - self.dialing, 0)

    @property
    def finished(self) -> bool:
        """Every queued callee has an outcome or was refused."""
        return self.waiting == 0 and self.dialing == 0


class CampaignQueue:
    """The queues of every campaign, as one dialer process (`worker`) sees them."""

    def __init__(self, redis, prefix: str = "zv:", *, worker: str = "") -> None:
        self.redis = redis
        self.prefix = prefix
        self.worker = worker
        self.active_key = f"{prefix}dialer:campaigns"
        self._enqueue = redis.register_script(ENQUEUE)
        self._claim = redis.register_script(CLAIM)
        self._settle = redis.register_script(SETTLE)
        self._release = redis.register_script(RELEASE)
        self._requeue = redis.register_script(REQUEUE)
        self._progress = redis.register_script(PROGRESS)
        self._drop_consumers = redis.register_script(DROP_CONSUMERS)

    def key(self, campaign: str, part: str) -> str:
        return f"{self.prefix}dialer:{{{campaign}}}:{part}"

    # ---- filling ------------------------------------------------------------------------------

    async def enqueue(
        self,
        campaign: str,
        callees: Iterable[str],
        invalid: Iterable[tuple[str, str]] = (),
        *,
        batch: int = 1000,
    ) -> int:
        """Queue `callees` (E.164) not queued before; count `invalid` (given, why refused).
        Returns how many were queued now. Idempotent: the same list again queues nothing."""
        keys = [self.key(campaign, part) for part in ("queue", "queued", "counts", "refused")]
        numbers, bad = list(callees), [item for pair in invalid for item in pair]
        added = 0
        for start in range(0, max(len(numbers), 1), batch):
            chunk = numbers[start : start + batch]
            extra = bad if start == 0 else []
            added += int(await self._enqueue(keys=keys, args=[GROUP, len(chunk), *chunk, *extra]))
        await self.redis.sadd(self.active_key, campaign)
        return added

    async def configure(
        self, campaign: str, *, cps: float | None = None, concurrency: int | None = None
    ) -> None:
        """The campaign's own calls per second and calls at once, for every dialer."""
        values = {"cps": cps, "concurrency": concurrency}
        given = {name: str(value) for name, value in values.items() if value is not None}
        if given:
            await self.redis.hset(self.key(campaign, "settings"), mapping=given)

    # ---- reading ------------------------------------------------------------------------------

    async def campaigns(self) -> list[str]:
        """The campaigns with callees queued, in a stable order."""
        return sorted(member.decode() for member in await self.redis.smembers(self.active_key))

    async def read(self, campaign: str, count: int) -> list[Entry]:
        """Up to `count` callees nobody has read yet; they are this dialer's from now on."""
        try:
            reply = await self.redis.xreadgroup(
                GROUP, self.worker, {self.key(campaign, "queue"): ">"}, count=count
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # no queue (any more)
                return []
            raise
        return [self._entry(campaign, entry) for _, entries in reply for entry in entries]

    async def take_over(self, campaign: str, idle: float, count: int = 100) -> list[Entry]:
        """Callees another dialer read and has not touched for `idle` s: it is gone (or
        stuck); they are this dialer's now."""
        key = self.key(campaign, "queue")
        try:
            reply = await self.redis.xautoclaim(
                key, GROUP, self.worker, int(idle * 1000), "0-0", count=count
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return []
            raise
        return [self._entry(campaign, entry) for entry in reply[1] if entry[1]]

    async def keep(self, campaign: str, ids: Sequence[str]) -> None:
        """Tell the other dialers this one still works on these entries (heartbeat)."""
        if ids:
            await self.redis.xclaim(
                self.key(campaign, "queue"), GROUP, self.worker, 0, list(ids), justid=True
            )

    @staticmethod
    def _entry(campaign: str, entry: tuple[bytes, dict[bytes, bytes]]) -> Entry:
        entry_id, fields = entry
        return Entry(campaign, entry_id.decode(), fields.get(b"c", b"").decode())

    # ---- one callee's way ---------------------------------------------------------------------

    async def claim(
        self,
        entry: Entry,
        *,
        host: str,
        attempt_id: str,
        cps: float,
        concurrency: int,
        horizon: float,
        now: float,
    ) -> Claim:
        """Claim `entry`'s callee for a call placed on `host` (see CLAIM); `cps` and
        `concurrency` apply when the campaign has none of its own."""
        record = json.dumps(
            {
                "worker": self.worker,
                "host": host,
                "attempt": attempt_id,
                "entry": entry.id,
                "since": now,
            },
            separators=(",", ":"),
        )
        keys = [self.key(entry.campaign, part) for part in ("calls", "settings", "pace")]
        status, ms, previous = await self._claim(
            keys=keys, args=[entry.callee, record, cps, concurrency, int(horizon * 1000)]
        )
        if status == b"wait":
            return Claim(wait=int(ms) / 1000)
        return Claim(delay=int(ms) / 1000, replaced=json.loads(previous) if previous else None)

    async def settle(self, entry: Entry, outcome: Outcome) -> bool:
        """The call has its outcome: counted once, whoever settles it; the entry is done."""
        return await self._finish(entry, outcome.value, "")

    async def refuse(self, entry: Entry, why: str) -> bool:
        """The callee may not be dialed (a rule, or Asterisk refused the Originate)."""
        return await self._finish(entry, "refused", why)

    async def _finish(self, entry: Entry, count: str, why: str) -> bool:
        keys = [self.key(entry.campaign, p) for p in ("queue", "calls", "counts", "refused")]
        counted = await self._settle(keys=keys, args=[GROUP, entry.id, entry.callee, count, why])
        return int(counted) == 1

    async def release(self, entry: Entry, attempt_id: str) -> None:
        """The claim did not lead to a call: the callee is no longer being placed; the entry
        stays with this dialer."""
        await self._release(
            keys=[self.key(entry.campaign, "calls")], args=[entry.callee, attempt_id]
        )

    async def requeue(self, entry: Entry) -> None:
        """Hand an entry this dialer has not claimed back to every dialer."""
        await self._requeue(
            keys=[self.key(entry.campaign, "queue")], args=[GROUP, entry.id, entry.callee]
        )

    # ---- what is known of a campaign ----------------------------------------------------------

    async def progress(self, campaign: str) -> Progress:
        keys = [self.key(campaign, part) for part in ("counts", "calls", "settings")]
        counts_flat, dialing, settings_flat = await self._progress(keys=keys)
        counts = _pairs(counts_flat)
        settings = _pairs(settings_flat)
        outcomes = {o: int(counts[o.value]) for o in OUTCOMES if o.value in counts}
        cps, concurrency = settings.get("cps"), settings.get("concurrency")
        return Progress(
            campaign,
            queued=int(counts.get("queued", 0)),
            invalid=int(counts.get("invalid", 0)),
            refused=int(counts.get("refused", 0)),
            dialing=int(dialing),
            outcomes=outcomes,
            cps=float(cps) if cps is not None else None,
            concurrency=int(concurrency) if concurrency is not None else None,
        )

    async def refusals(self, campaign: str, limit: int = 10) -> dict[str, str]:
        """Some refused callees with the reason (at most `limit`)."""
        found: dict[str, str] = {}
        async for callee, why in self.redis.hscan_iter(self.key(campaign, "refused")):
            found[callee.decode()] = why.decode()
            if len(found) >= limit:
                break
        return found

    async def calls(self, campaign: str) -> dict[str, dict[str, str]]:
        """The calls being placed now: callee -> its claim."""
        raw = await self.redis.hgetall(self.key(campaign, "calls"))
        return {callee.decode(): json.loads(record) for callee, record in raw.items()}

    async def forget_if_done(self, campaign: str) -> bool:
        """Take a campaign with nothing left to dial out of the set the dialers look at, and
        its dialed entries out of its queue (its callees and counts stay: a callee is still
        queued once). It is put back at once if callees were queued meanwhile (they add it
        after queueing)."""
        queue = self.key(campaign, "queue")
        newest = await self.redis.xrevrange(queue, count=1)  # before looking: none newer goes
        if not (await self.progress(campaign)).finished:
            return False
        if newest:
            await self.redis.xtrim(queue, minid=newest[0][0].decode(), approximate=False)
        await self.drop_consumers(campaign, everyone=True)
        await self.redis.srem(self.active_key, campaign)
        if not (await self.progress(campaign)).finished:
            await self.redis.sadd(self.active_key, campaign)
            return False
        return True

    async def drop_consumers(self, campaign: str, *, everyone: bool = False) -> int:
        """Forget this dialer (`everyone`: every dialer) as a consumer of the campaign's queue,
        unless it still holds entries: a dialer that stops, or a campaign that is done, leaves
        no consumer behind. Returns how many were forgotten."""
        names = [] if everyone else [self.worker]
        return int(
            await self._drop_consumers(keys=[self.key(campaign, "queue")], args=[GROUP, *names])
        )


def _pairs(flat: list[bytes]) -> dict[str, str]:
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def split_callees(
    callees: Iterable[str], region: str = phone.DEFAULT_REGION
) -> tuple[list[str], list[tuple[str, str]]]:
    """The callees as E.164 numbers to queue (each once, in order), and those that are not
    phone numbers, with why."""
    numbers: dict[str, None] = {}
    invalid: dict[str, str] = {}
    for raw in callees:
        number = phone.normalize(raw, region)
        if number is None:
            invalid.setdefault(raw.strip(), "not a phone number")
        else:
            numbers.setdefault(number)
    return list(numbers), list(invalid.items())


def progress_document(progress: Progress, calls: dict[str, dict[str, str]]) -> dict[str, Any]:
    """A campaign's progress as the CLI's --json and the API give it."""
    p = progress
    return {
        "campaign": p.campaign,
        "callees": p.queued + p.invalid,
        "waiting": p.waiting,
        "dialing": p.dialing,
        "done": p.done,
        "refused": p.refused + p.invalid,
        "outcomes": {o.value: p.outcomes.get(o, 0) for o in OUTCOMES},
        "dialing_by_host": dict(Counter(str(call.get("host")) for call in calls.values())),
        "cps": p.cps,
        "concurrency": p.concurrency,
    }
