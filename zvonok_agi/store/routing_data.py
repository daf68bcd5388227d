"""Routing data in Redis: accounts, numbers, campaigns, and the stream of their changes.

Every write goes through `RoutingData.write`: one Lua script per batch changes the records,
the version and the stream together. The keys (prefix `zv:` by default) share the hash tag
`{routing}`, so that on a Redis Cluster they live in one slot and one script may touch them all:

  zv:{routing}:accounts   hash  id  -> [rev, verified, name]
  zv:{routing}:numbers    hash  did -> [rev, pool, status, owner, callback_rule, inbound_campaign]
  zv:{routing}:campaigns  hash  id  -> [rev, account, kind, accept_inbound, state, caller_id,
                                         scenario (left out when the campaign has none)]
  zv:{routing}:version    the version of the whole, +1 per change
  zv:{routing}:changes    stream, one entry per change: id "<version>-0", fields k (kind),
                          i (id), v (the new value; empty: deleted); about MAX_CHANGES kept
  zv:{routing}:fence      the fencing token of the control plane's publisher holding its lock
                          now (`fence`); engines never read it

Values are JSON arrays. `rev` is the record's revision in the control plane's store: a write
never puts an older revision over a newer one (two publishers racing), and a value equal to the
stored one changes nothing. A missing version key (a new or emptied Redis) starts again from
the clock in microseconds, above any version a reader has seen, so the reader notices the jump.
A write may carry a fencing token (`fence`): one older than the newest taken is refused whole
(`Superseded`), which is what keeps a publisher that lost its lock from writing late.

The engine keeps the whole routing data in memory (`RoutingCache`): one full load at start, then
every change from the stream applied in place. A gap (the stream trimmed past the engine's
version), a version gone back or a change it cannot read make it load everything again and
swap the new copy in at once (the old one is freed later, a piece at a time). Loads run in
chunks, changes in small batches, and the records are kept as their stored strings (`Table`):
no step holds the event loop for long, whatever the size. A call to a reserved number still
reaches its bound inbound campaign while Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from ..metrics import METRICS
from ..routing import scenario as scenarios
from ..routing.model import (
    Account,
    CallbackRule,
    Campaign,
    CampaignKind,
    CampaignState,
    Number,
    NumberStatus,
    Pool,
)
from ..tasks import LoopErrors, cancel_and_wait, cancel_requested
from .connection import literal_glob

log = structlog.get_logger(__name__)

KINDS = ("account", "number", "campaign")
MAX_CHANGES = 100_000  # stream entries kept: an engine further behind loads everything again
WRITE_BATCH = 200  # changes per script call: Redis runs a script to its end, others wait
SCAN_CHUNK = 250  # records per HSCAN of a full load: parsing the reply is one loop step
READ_CHUNK = 100  # stream entries per read: parsing and applying them is one loop step
LOAD_ATTEMPTS = 5
RELEASE_AFTER = 10.0  # seconds a replaced copy is kept for the calls still reading it
# The record keys of the layout before the hash tag: `<kind>:` then an id or a number.
OLD_KEY = re.compile(rb"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")

Record = Account | Number | Campaign

# KEYS: version, changes, then the hashes of account, number, campaign, then the fence.
# ARGV: MAX_CHANGES, then the changes as one JSON array of [kind, id, value, expected]
# (one argument: redis-py packs arguments slowly, Redis's cjson decodes fast), then the
# writer's fencing token (empty or absent: none), then "1" to write only into routing data
# that exists (none: nil, nothing written).
#   A token below the fence: nothing is done, the fence is returned (a number). A token above
#   it (the fence lost with a failover or an emptied Redis) raises it.
#   value not empty: store it, unless the stored value is the same or of a newer revision
#   (a refused one is returned as stale); value empty: delete, if expected is empty or is
#   the stored value. Each change made is one entry of the stream.
WRITE_SCRIPT = """
local hashes = {account = KEYS[3], number = KEYS[4], campaign = KEYS[5]}
local token = tonumber(ARGV[3] or '')
if token then
  local fence = tonumber(redis.call('GET', KEYS[6]) or '0')
  if token < fence then
    return fence
  elseif token > fence then
    redis.call('SET', KEYS[6], ARGV[3])
  end
end
local version = tonumber(redis.call('GET', KEYS[1]) or '')
if not version then
  if ARGV[4] == '1' then
    return false
  end
  local now = redis.call('TIME')
  version = tonumber(now[1]) * 1000000 + tonumber(now[2])
end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if last then
  local top = tonumber(string.match(last[1], '^(%d+)'))
  if top > version then version = top end
end
local function rev(value)
  return tonumber(string.match(value, '^%[(%d+)') or '0')
end
local changed, stale = 0, {}
for _, change in ipairs(cjson.decode(ARGV[2])) do
  local kind, id, value, expected = change[1], change[2], change[3], change[4]
  local hash = hashes[kind]
  local stored = redis.call('HGET', hash, id)
  local write = false
  if value ~= '' then
    if stored ~= value then
      if stored and rev(stored) > rev(value) then
        stale[#stale + 1] = kind
        stale[#stale + 1] = id
      else
        redis.call('HSET', hash, id, value)
        write = true
      end
    end
  elseif stored and (expected == '' or expected == stored) then
    redis.call('HDEL', hash, id)
    write = true
  end
  if write then
    version = version + 1
    changed = changed + 1
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], string.format('%d-0', version),
               'k', kind, 'i', id, 'v', value)
  end
end
if changed > 0 then
  redis.call('SET', KEYS[1], string.format('%d', version))
end
return stale
"""


# KEYS: the fence. A new fencing token: the clock in microseconds, or the last one + 1 if that
# is not above it (two taken within a microsecond, a clock set back); from the clock, a token
# taken after Redis lost the fence (emptied, or a failover that lost the last write) is still
# above every one taken before.
FENCE_SCRIPT = """
local now = redis.call('TIME')
local token = tonumber(now[1]) * 1000000 + tonumber(now[2])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if token <= last then token = last + 1 end
redis.call('SET', KEYS[1], string.format('%d', token))
return token
"""


class Superseded(Exception):
    """A write refused whole: its fencing token is older than the newest taken (its writer
    lost the lock it was taken with, and another writer holds it now)."""


class BadChange(ValueError):
    """A record or a change that cannot be read (written by hand, or by a newer release)."""


class NoRoutingData(Exception):
    """Redis holds no routing data (new, or emptied): a write meant for the routing data
    there wrote nothing."""


class Gap(Exception):
    """The copy cannot follow: changes between its version and the next one are gone."""


@dataclass(frozen=True, slots=True)
class Put:
    record: Record
    rev: int = 0  # the store's revision of the record; 0: written without a store


@dataclass(frozen=True, slots=True)
class Stored:
    """A put of a value already encoded (`encode_values`), as the control plane's store
    gives it."""

    kind: str
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Delete:
    kind: str
    key: str
    expected: str = ""  # delete only if the stored value is still this one; empty: any


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the stream: the record as it is from `version` on (None: deleted), and
    its stored value."""

    version: int
    kind: str
    key: str
    record: Record | None
    value: str = ""


class Table(MutableMapping):
    """Records of one kind by key, kept as their stored values and decoded when read.

    Plain strings are nothing the garbage collector walks: with half a million records as
    objects, each of its full passes would stop the engine for ~100 ms, and a full load would
    set off several. The values are spread over SHARDS dicts, so that no dict grows so big
    that growing it once more (copying it whole) holds the event loop for long. A value that
    cannot be read is logged (once) and its record is absent.

    The last DECODED records decoded are kept, each with the value it came from: a call reads
    its number and the same few campaigns several times, and each decoding costs microseconds.
    A kept record is used only while the table still holds that very value. They are few:
    they are objects, young ones, and the collector's young passes walk them (4,096 of them
    made such a pass 2.7 ms long at half a million numbers, where most are read once).
    """

    SHARDS = 256
    DECODED = 512

    def __init__(self, kind: str, records: Mapping[str, Record] | None = None) -> None:
        self.kind = kind
        self._shards: list[dict[str, str | Record]] = [{} for _ in range(self.SHARDS)]
        self._bad: set[str] = set()
        self._decoded: dict[str, tuple[str, Record]] = {}  # key -> (value, its record)
        for key, record in (records or {}).items():
            self[key] = record

    def _shard(self, key: str) -> dict[str, str | Record]:
        return self._shards[hash(key) % self.SHARDS]

    def put(self, key: str, value: str | Record) -> None:
        """Puts a stored value (or a record) in, unchecked."""
        self._shard(key)[key] = value

    def __getitem__(self, key: str) -> Record:
        return self._record(key, self._shard(key)[key])

    def get(self, key: str, default: Any = None) -> Any:
        value = self._shard(key).get(key)
        if value is None:
            return default
        try:
            return self._record(key, value)
        except KeyError:
            return default

    def _record(self, key: str, value: str | Record, keep: bool = True) -> Record:
        """The record of a stored value; `keep` it decoded (not while going through them
        all: that would only push the hot ones out)."""
        if not isinstance(value, str):
            return value
        decoded = self._decoded.get(key)
        if decoded is not None and decoded[0] is value:
            return decoded[1]
        try:
            record = decode(self.kind, key, value)
        except BadChange as exc:
            if key not in self._bad:
                self._bad.add(key)
                log.error("bad routing record skipped", kind=self.kind, key=key, error=str(exc))
            raise KeyError(key) from None
        if not keep:
            return record
        if len(self._decoded) >= self.DECODED:
            del self._decoded[next(iter(self._decoded))]  # the oldest
        self._decoded[key] = (value, record)
        return record

    def __setitem__(self, key: str, record: Record) -> None:
        self._shard(key)[key] = record
        self._bad.discard(key)

    def __delitem__(self, key: str) -> None:
        del self._shard(key)[key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._shard(key)

    def __iter__(self) -> Iterator[str]:
        for shard in self._shards:
            yield from list(shard)

    def __len__(self) -> int:
        return sum(map(len, self._shards))

    def items(self) -> Iterator[tuple[str, Record]]:  # type: ignore[override]
        """The records that can be read."""
        for shard in self._shards:
            for key, value in list(shard.items()):
                try:
                    record = self._record(key, value, keep=False)
                except KeyError:
                    continue  # unreadable: logged
                yield key, record

    def values(self) -> Iterator[Record]:  # type: ignore[override]
        return (record for _, record in self.items())

    async def release(self) -> None:
        """Empties the table a shard at a time: freed at once, half a million values would
        hold the event loop for tens of ms."""
        self._decoded.clear()
        for shard in self._shards:
            shard.clear()
            await asyncio.sleep(0)


@dataclass(eq=False)
class RoutingSnapshot:
    """The routing data at `version` (-1: never loaded). The engine's copy is changed in place,
    one record at a time: a reader between two awaits sees every record whole.
    `service_pool` holds the service numbers (decoded): the pool's candidates."""

    version: int = -1
    accounts: MutableMapping[str, Account] = field(default_factory=lambda: Table("account"))
    numbers: MutableMapping[str, Number] = field(default_factory=lambda: Table("number"))
    campaigns: MutableMapping[str, Campaign] = field(default_factory=lambda: Table("campaign"))
    service_pool: dict[str, Number] = field(default_factory=dict)

    def table(self, kind: str) -> MutableMapping:
        if kind == "number":
            return self.numbers
        return self.campaigns if kind == "campaign" else self.accounts

    def put(self, kind: str, key: str, value: str) -> None:
        """Puts a stored value in, as a full load reads it (checked when read)."""
        table = self.table(kind)
        if isinstance(table, Table):
            table.put(key, value)
        else:
            table[key] = decode(kind, key, value)
        if kind == "number":
            self.service_pool.pop(key, None)
            if _pool_of(value) == '"service"':
                with contextlib.suppress(BadChange):
                    self.service_pool[key] = decode(kind, key, value)

    def apply(self, change: Change) -> None:
        if change.version != self.version + 1:
            raise Gap(f"at version {self.version}, the next change is {change.version}")
        table = self.table(change.kind)
        record = change.record
        if record is None:
            table.pop(change.key, None)
        elif isinstance(table, Table):
            table.put(change.key, change.value)
        else:
            table[change.key] = record
        if change.kind == "number":
            if isinstance(record, Number) and record.is_service:
                self.service_pool[change.key] = record
            else:
                self.service_pool.pop(change.key, None)
        self.version = change.version


class RoutingData:
    def __init__(self, redis: aioredis.Redis, prefix: str = "zv:") -> None:
        self.redis = redis
        self.prefix = prefix
        base = f"{prefix}{{routing}}:"
        self.hashes = {kind: f"{base}{kind}s" for kind in KINDS}
        self.version_key = f"{base}version"
        self.changes_key = f"{base}changes"
        self.fence_key = f"{base}fence"
        self._keys = [self.version_key, self.changes_key, *self.hashes.values(), self.fence_key]
        self._write = redis.register_script(WRITE_SCRIPT)
        self._fence = redis.register_script(FENCE_SCRIPT)

    # writes

    async def fence(self) -> int:
        """A fencing token above every one taken before: writes with an older one are refused
        from now on. Taken by a writer that has just acquired its lock, before it reads what
        it will write."""
        return int(await self._fence(keys=[self.fence_key]))

    async def write(
        self,
        changes: Iterable[Put | Stored | Delete],
        *,
        token: int | None = None,
        into_existing: bool = False,
    ) -> list[tuple[str, str]]:
        """Applies `changes` in order, WRITE_BATCH per script; returns (kind, key) of the puts
        refused because Redis holds a newer revision. With a fencing `token`, Superseded once
        a newer one was taken: the batches before were written, none after. `into_existing`:
        only into routing data Redis holds, else NoRoutingData (the batches before stay)."""
        stale: list[tuple[str, str]] = []
        batch: list[list[str]] = []
        for change in changes:
            if isinstance(change, Put):
                kind, key = record_key(change.record)
                batch.append([kind, key, encode(change.record, change.rev), ""])
            elif change.kind not in KINDS:
                raise ValueError(f"unknown kind {change.kind!r}")
            elif isinstance(change, Stored):
                batch.append([change.kind, change.key, change.value, ""])
            else:
                batch.append([change.kind, change.key, "", change.expected])
            if len(batch) >= WRITE_BATCH:
                stale += await self._run(batch, token, into_existing)
                batch = []
        if batch:
            stale += await self._run(batch, token, into_existing)
        return stale

    async def _run(
        self, batch: list[list[str]], token: int | None, into_existing: bool
    ) -> list[tuple[str, str]]:
        args = [MAX_CHANGES, _json(batch), "" if token is None else token, int(into_existing)]
        refused = await self._write(keys=self._keys, args=args)
        if isinstance(refused, int):
            raise Superseded(f"fencing token {token} is older than {refused}: the lock was lost")
        if refused is None:
            raise NoRoutingData("Redis holds no routing data")
        texts = [_text(item) for item in refused]
        return list(zip(texts[::2], texts[1::2], strict=True))

    async def put_account(self, account: Account) -> None:
        await self.write([Put(account)])

    async def put_number(self, number: Number) -> None:
        await self.write([Put(number)])

    async def put_campaign(self, campaign: Campaign) -> None:
        await self.write([Put(campaign)])

    async def delete_number(self, did: str) -> None:
        await self.write([Delete("number", did)])

    async def delete_campaign(self, campaign_id: str) -> None:
        await self.write([Delete("campaign", campaign_id)])

    async def delete_account(self, account_id: str) -> None:
        await self.write([Delete("account", account_id)])

    async def delete_old_layout(self) -> int:
        """Deletes the routing data as releases before the hash tag kept it (`<kind>:<key>`
        hashes, `<kind>s` sets, `routing:version`), read by no engine since; the keys deleted.
        A key of that form holding something else (any other name) is left alone."""
        deleted = 0
        for kind in KINDS:
            old: list[bytes] = []
            head = f"{self.prefix}{kind}:".encode()
            async for key in self.redis.scan_iter(
                match=f"{literal_glob(self.prefix)}{kind}:*", count=SCAN_CHUNK * 2
            ):
                if OLD_KEY.fullmatch(key.removeprefix(head)):
                    old.append(key)
            for start in range(0, len(old), SCAN_CHUNK):
                deleted += await self.redis.delete(*old[start : start + SCAN_CHUNK])
        for key in [*(f"{self.prefix}{kind}s" for kind in KINDS), f"{self.prefix}routing:version"]:
            deleted += await self.redis.delete(key)  # one by one: no slot shared on a Cluster
        return deleted

    # reads

    async def version(self) -> int | None:
        """The current version; None when no routing data was ever written to this Redis."""
        value = await self.redis.get(self.version_key)
        return None if value is None else int(value)

    async def scan(self, kind: str) -> AsyncIterator[dict[str, str]]:
        """Every key and stored value of one kind, SCAN_CHUNK at a time. A record changed
        during the scan may come in either state: follow with the changes since. (A dict of
        text is nothing the garbage collector tracks; a list of pairs would set off its passes
        through a full load.)"""
        cursor = 0
        while True:
            cursor, items = await self.redis.hscan(self.hashes[kind], cursor, count=SCAN_CHUNK)
            yield {_text(k): _text(v) for k, v in items.items()}
            if cursor == 0:
                return

    async def changes(
        self, after: int, count: int = READ_CHUNK, block: float | None = None
    ) -> list[Change]:
        """The changes after version `after`, oldest first; with `block` (seconds), waits that
        long for one when there is none. BadChange if one cannot be read."""
        if block is None:
            entries = await self.redis.xrange(self.changes_key, f"{after + 1}-0", count=count)
        else:
            streams = await self.redis.xread(
                {self.changes_key: f"{after}-0"}, count=count, block=max(1, int(block * 1000))
            )
            entries = streams[0][1] if streams else []
        return [_change(entry_id, fields) for entry_id, fields in entries]

    async def load(self) -> RoutingSnapshot:
        """The whole routing data: every record as scanned, then the changes made since the
        scan began (so a record changed meanwhile ends in its last state)."""
        for _ in range(LOAD_ATTEMPTS):
            version = await self.version()
            snapshot = RoutingSnapshot(version=version or 0)
            for kind in KINDS:
                async for chunk in self.scan(kind):
                    for key, value in chunk.items():
                        snapshot.put(kind, key, value)
            if version is None:
                if await self.version() is None:
                    return snapshot
                await release(snapshot)
                continue  # first written meanwhile: scan again, from a version
            try:
                await self.catch_up(snapshot)
            except (Gap, BadChange) as exc:
                log.info("routing data changed too much during the load; again", why=str(exc))
                await release(snapshot)
                continue
            return snapshot
        raise RedisError("routing data kept changing during the load")

    async def read(
        self, wanted: Mapping[str, Iterable[str]], snapshot: RoutingSnapshot | None = None
    ) -> RoutingSnapshot:
        """Only the records named (kind -> keys), into `snapshot` or a new copy at the current
        version: what one decision reads (`zvonok-agi route`), where `load` reads everything."""
        if snapshot is None:
            snapshot = RoutingSnapshot(version=await self.version() or 0)
        for kind, keys in wanted.items():
            keys = sorted(set(keys))
            if not keys:
                continue
            values = await self.redis.hmget(self.hashes[kind], keys)
            for key, value in zip(keys, values, strict=True):
                if value is not None:
                    snapshot.put(kind, key, _text(value))
        return snapshot

    async def catch_up(self, snapshot: RoutingSnapshot) -> None:
        """Applies the changes after `snapshot.version` until there are none."""
        while changes := await self.changes(snapshot.version):
            for change in changes:
                snapshot.apply(change)


class RoutingCache:
    """The engine's in-memory copy of the routing data, kept current.

    `snapshot` is always usable: the last good copy stays while Redis is away, and while
    Redis holds no routing data at all (emptied: the control plane's `sync` fills it again).
    """

    def __init__(
        self,
        data: RoutingData,
        refresh_interval: float = 1.0,
        on_load: Callable[[], None] | None = None,
    ) -> None:
        self.data = data
        self.refresh_interval = refresh_interval
        self.on_load = on_load  # called right after each full load is swapped in
        self.snapshot = RoutingSnapshot()
        self._task: asyncio.Task[None] | None = None
        self._releasing: list[asyncio.Task[None]] = []
        self._missing_logged = False
        timeout = data.redis.get_connection_kwargs().get("socket_timeout")
        # A blocking read must return before the client's socket timeout ends it.
        self._block = min(refresh_interval, timeout or refresh_interval) / 2

    async def start(self) -> None:
        try:
            await self.reload()
        except (RedisError, OSError) as exc:
            log.warning("routing data not loaded; retrying in the background", error=str(exc))
        self._task = asyncio.create_task(self._follow(), name="routing-follow")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, *self._releasing)
        self._task = None
        self._releasing = []

    async def _release(self, old: RoutingSnapshot) -> None:
        # Calls still deciding on the old copy end within their session deadline.
        await asyncio.sleep(RELEASE_AFTER)
        await release(old)
        self._releasing = [task for task in self._releasing if not task.done()]

    @property
    def loaded(self) -> bool:
        """Whether the routing data was ever loaded (the last good copy is kept)."""
        return self.snapshot.version >= 0

    async def reload(self) -> None:
        started = time.monotonic()
        snapshot = await self.data.load()
        old, self.snapshot = self.snapshot, snapshot
        if self.on_load is not None:
            self.on_load()
        self._releasing.append(asyncio.create_task(self._release(old), name="routing-release"))
        METRICS.routing_loaded()
        log.info(
            "routing data loaded",
            version=snapshot.version,
            accounts=len(snapshot.accounts),
            numbers=len(snapshot.numbers),
            campaigns=len(snapshot.campaigns),
            seconds=round(time.monotonic() - started, 3),
        )

    # The loop rides out any failure (logged and counted, see zvonok_agi.tasks), and ends when
    # its cancellation was swallowed or turned into a store error by redis-py: the request is
    # still on record.
    async def _follow(self) -> None:
        errors = LoopErrors("routing-follow")
        loop = asyncio.get_running_loop()
        reload = self.snapshot.version < 0
        checked = loop.time()
        while not cancel_requested():
            try:
                if reload:
                    await self.reload()
                    reload = False
                changes = await self.data.changes(self.snapshot.version, block=self._block)
                for change in changes:
                    self.snapshot.apply(change)
                METRICS.routing_changes(len(changes))
                if not changes and loop.time() - checked >= self.refresh_interval:
                    checked = loop.time()
                    reload = await self._lost_track()
            except Gap as exc:
                log.warning("routing changes missed; loading everything again", why=str(exc))
                reload = True
            except BadChange as exc:
                log.error("unreadable routing change; loading everything again", error=str(exc))
                reload = True
            except Exception as exc:
                if cancel_requested():
                    return
                if isinstance(exc, RedisError | OSError):
                    METRICS.store_error("routing_data")
                errors.failed(exc, kept_version=self.snapshot.version)
                await asyncio.sleep(self.refresh_interval)
            else:
                errors.succeeded()

    async def _lost_track(self) -> bool:
        """Whether the version says the stream cannot bring this copy up to date: it went back
        (Redis restored from an older copy) or it moved with no change in the stream."""
        version = await self.data.version()
        mine = self.snapshot.version
        if version is None:
            if mine > 0 and not self._missing_logged:
                log.warning(
                    "Redis holds no routing data: keeping the copy in memory "
                    "(run `zvonok-agi sync` to fill Redis from the control plane)"
                )
                self._missing_logged = True
            return False
        self._missing_logged = False
        return version < mine or (version > mine and not await self.data.changes(mine, 1))


async def release(snapshot: RoutingSnapshot) -> None:
    """Empties a copy no longer used, a shard at a time (see `Table.release`)."""
    for table in (snapshot.accounts, snapshot.numbers, snapshot.campaigns):
        if isinstance(table, Table):
            await table.release()


# records <-> stored values


def record_key(record: Record) -> tuple[str, str]:
    if isinstance(record, Number):
        return "number", record.did
    if isinstance(record, Campaign):
        return "campaign", record.id
    return "account", record.id


# The fields of each kind's stored value, after the revision; named as the record's attributes
# and the control plane's columns.
FIELDS = {
    "account": ("verified", "name"),
    "number": ("pool", "status", "owner", "callback_rule", "inbound_campaign"),
    "campaign": ("account", "kind", "accept_inbound", "state", "caller_id", "scenario"),
}


def encode(record: Record, rev: int = 0) -> str:
    kind, _ = record_key(record)
    values = [getattr(record, name) for name in FIELDS[kind]]
    if isinstance(record, Campaign):
        values[-1] = None if record.scenario is None else scenarios.stored(record.scenario)
    return encode_values(rev, stored_fields(kind, values))


def stored_fields(kind: str, values: list[object]) -> list[object]:
    """FIELDS' values as a stored value holds them: flags as 0/1, a campaign's scenario (the
    store keeps its stored form as JSON text) as JSON, and left out when there is none, so
    that such a record reads the same to an engine of an older release."""
    values = [int(v) if isinstance(v, bool) else v for v in values]
    if kind == "campaign":
        scenario = values.pop()
        if isinstance(scenario, str):
            scenario = json.loads(scenario)
        if scenario is not None:
            values.append(scenario)
    return values


def encode_values(rev: int, values: Iterable[object]) -> str:
    """The stored value of a record from its revision and its FIELDS' values (flags as 0/1,
    as the store keeps them)."""
    return _json([rev, *values])


_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def revision(value: bytes | str) -> int:
    """The revision a stored value carries (0 if it carries none)."""
    text = _text(value)
    head = text[1 : text.find(",")] if text.startswith("[") else ""
    return int(head) if head.isdigit() else 0


_POOLS = {item.value: item for item in Pool}
_STATUSES = {item.value: item for item in NumberStatus}
_RULES = {item.value: item for item in CallbackRule}
_CAMPAIGN_KINDS = {item.value: item for item in CampaignKind}
_STATES = {item.value: item for item in CampaignState}


def decode(kind: str, key: str, value: str) -> Record:
    """The record a stored value holds; BadChange if it holds none."""
    try:
        fields = orjson.loads(value)  # a few times per call: json's decoder costs 3x
        if kind == "number":
            _, pool, status, owner, rule, inbound = fields
            return Number(
                key, _POOLS[pool], _STATUSES[status], _name(owner), _RULES[rule], _name(inbound)
            )
        if kind == "campaign":
            _, account, campaign_kind, accept, state, caller_id, *scenario = fields
            if not account:
                raise ValueError("no account")
            if len(scenario) > 1:
                raise ValueError("too many fields")
            return Campaign(
                key,
                _name(account),
                _CAMPAIGN_KINDS[campaign_kind],
                _flag(accept),
                _STATES[state],
                _name(caller_id),
                scenario=scenarios.from_stored(scenario[0]) if scenario else None,
            )
        if kind == "account":
            _, verified, name = fields
            if not isinstance(name, str):
                raise TypeError("name is no text")
            return Account(key, _flag(verified), name)
    except (ValueError, KeyError, TypeError) as exc:
        raise BadChange(f"{kind} {key}: {value[:200]!r}: {exc!r}") from None
    raise BadChange(f"unknown kind {kind!r} ({key})")


def _pool_of(value: str) -> str:
    """The pool field of a stored number, as JSON text, without decoding the rest."""
    parts = value.split(",", 2)
    return parts[1] if len(parts) > 1 else ""


def _name(value: object) -> str | None:
    """An id in a record. Not interned: records are decoded per call and dropped, and the
    interpreter's table of interned text, which then grows and sheds ids all day, is resized
    whole on the event loop (~13 ms at this size)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is no id")
    return value


def _flag(value: object) -> bool:
    if value not in (0, 1) or isinstance(value, float):
        raise ValueError(f"{value!r} is not 0 or 1")
    return bool(value)


def _change(entry_id: bytes | str, fields: dict) -> Change:
    try:
        version = int(_text(entry_id).partition("-")[0])
        values = {_text(k): _text(v) for k, v in fields.items()}
        kind, key, value = values["k"], values["i"], values["v"]
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise BadChange(f"stream entry {entry_id!r}: {exc!r}") from None
    if kind not in KINDS:
        raise BadChange(f"stream entry {entry_id!r}: unknown kind {kind!r}")
    return Change(version, kind, key, decode(kind, key, value) if value else None, value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
