"""The control plane's changes reach Redis through a transactional outbox.

A change commits together with its outbox row and its record's new revision (`Queries.touch`,
whose statement also returns the record as written). Only then, outside the store's write
lock, its process sends it (`after_commit`): the record as committed, with those of the
process's other changes that committed meanwhile (one lock, one token, one write for them
all), deletes their rows, and if the outbox holds others, `publish`es them: reads the oldest
rows and the records they name as they are now, writes those to Redis and deletes the rows.
Redis never holds what the store did not commit, and a change the store committed reaches
Redis even if the process dies right after the commit: whoever publishes next (the admin
server at start and every few seconds, the next change of any process) sends it.

One publisher at a time, of all the processes sharing the store (`Store.publishing`: the
admin servers, the CLI's commands, on one host or several): each writes what the store
committed before the next one reads, so Redis takes the changes in the order they were
committed (a record sent after a newer revision of it is refused), a record that is gone from
the store too. The others wait for it, a few milliseconds; M admin processes do not send every
change M times. Idempotent, whoever runs it and however often: Redis refuses a record older
than the one it holds (`RoutingData.write` compares revisions), so rows published twice after
a crash before their delete change nothing. A record deleted from the store and made again
starts its revision anew: Redis refuses it, and the publisher outranks it (`_drain`). Redis
away: the rows stay, `run` retries with backoff.

A publisher can lose its lock while it runs (PostgreSQL's advisory lock goes with a lost
link) and another take it; the first one's write, already on its way, then arrives after the
second one's. A revision cannot settle that for a delete (it carries none), nor for a record
deleted and made again (its revision began anew, below the late one). So each holder of the
lock takes a fencing token from Redis right after the lock and before it reads anything
(`RoutingData.fence`: above every token taken before, from the clock, so a Redis that lost
it still orders them), and every write carries it: Redis refuses, whole, a write whose token
is older than the newest taken (`Superseded`). The late writer leaves its outbox rows in
place and tries again later, with the lock and a new token; what the newer holder read came
after the token it took, so it is at least as new as anything the late one read. A write that
reached Redis before the newer token was taken is followed by the newer holder's, which
reads the outbox (those rows are still there) after it.

Of the store it needs only read and write transactions, the publisher's lock, and in them
`outbox`, `routing_values`, `routing_page`, `published` and `outrank` (and a change's
`outboxed`): plain SQL both databases run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

import structlog
from redis.exceptions import RedisError

from ..metrics import METRICS
from ..store.routing_data import (
    KINDS,
    Delete,
    NoRoutingData,
    RoutingData,
    Stored,
    Superseded,
    revision,
)
from ..tasks import LoopErrors, cancel_requested
from .store import Queries, Store, StoreUnavailable

log = structlog.get_logger(__name__)

LOOP = "outbox-publish"  # the background loop's name in logs and metrics
PUBLISH_BATCH = 2000  # outbox rows per read
REBUILD_BATCH = 1000  # records per read of a rebuild
# What publishing can fail on for a while: Redis away, the store away or busy past its
# timeout (another process publishing for too long too), or the lock lost to another process.
UNAVAILABLE = (RedisError, OSError, StoreUnavailable, Superseded)
Row = tuple[int, Stored | Delete]  # an outbox row's seq and its record as committed


@dataclass(frozen=True)
class SyncReport:
    accounts: int
    numbers: int
    campaigns: int
    removed: dict[str, int] = field(default_factory=dict)


class Publisher:
    def __init__(
        self,
        store: Store,
        data: RoutingData,
        *,
        interval: float = 5.0,
        retry: float = 0.5,
        max_retry: float = 5.0,
    ) -> None:
        self.store = store
        self.data = data
        self.interval = interval  # `run` looks at the outbox this often (other processes' rows)
        self.retry = retry
        self.max_retry = max_retry
        self.failing = False  # the last attempt failed: `run` retries, changes do not wait
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._token: int | None = None  # the fencing token taken with the publisher's lock
        self._committed: list[Row] = []  # this process's changes' rows, not sent yet

    async def publish(self) -> int:
        """Publishes the whole outbox; the rows published. Raises one of UNAVAILABLE when Redis
        or the store is away (what is not published stays in the outbox).

        Redis holding no routing data at all (new, or emptied) is first filled from the store.
        """
        async with self._lock, self._publishing():
            return await self._publish()

    async def after_commit(self, rows: Sequence[Row] = ()) -> None:
        """Right after a change committed: publish it now, unless Redis is known to be away
        (then `run` does when it is back). `rows`: the outbox rows it committed, with their
        records as committed (`Queries.outboxed`), sent as they are, together with those of
        the changes of this process that committed meanwhile; then whatever else the outbox
        holds. Never raises: the change is committed."""
        if self.failing:  # the rows stay in the outbox for `run`
            self._wake.set()
            return
        self._committed += rows
        try:
            async with self._lock:
                if rows and not self._committed:  # sent with another change's
                    return
                async with self._publishing():
                    await self._publish()
        except UNAVAILABLE as exc:
            self._kept(exc)

    async def publish_rows(self, rows: list[Row]) -> None:
        """Publishes outbox rows just committed, with the values they were committed with (an
        import's batch): nothing to read back. A Redis emptied meanwhile (restarted without its
        data) is filled from the store instead, not given this batch alone. Never raises: what
        fails is left to `run`."""
        if self.failing or not rows:
            self._wake.set()
            return
        try:
            async with self._lock, self._publishing():
                try:
                    if await self._send(rows, into_existing=True):
                        await self._drain()
                except NoRoutingData:  # the rows are still in the outbox: sent with the rest
                    await self._publish()
        except UNAVAILABLE as exc:
            self._kept(exc)

    def _kept(self, exc: BaseException) -> None:
        """Publishing right after a commit failed: the rows stay for `run`, and the next
        changes do not wait for Redis."""
        self.failing = True
        self._wake.set()
        log.warning(
            "change committed, not in Redis yet: kept in the outbox",
            error=str(exc) or type(exc).__name__,
        )

    async def rebuild(self) -> SyncReport:
        """Writes every record of the store to Redis and removes what the store does not hold
        (`zvonok-agi sync`); then publishes the outbox."""
        async with self._lock, self._publishing():
            report = await self._rebuild()
            await self._drain()
            return report

    async def run(self) -> None:
        """Publishes what was left at start, then whenever a change asks and every `interval`;
        while Redis or the store is away, retries with backoff. Rides out any failure (logged
        and counted, see zvonok_agi.tasks)."""
        errors = LoopErrors(LOOP, expected=UNAVAILABLE)
        delay = self.retry
        while not cancel_requested():
            try:
                await self.publish()
            except Exception as exc:
                if cancel_requested():  # the cancellation came back as a store error
                    return
                self.failing = True
                errors.failed(exc)
                with contextlib.suppress(Exception):
                    METRICS.outbox_pending(await self._pending())
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry)
                continue
            errors.succeeded()
            delay = self.retry
            METRICS.outbox_pending(0)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    @contextlib.asynccontextmanager
    async def _publishing(self) -> AsyncIterator[None]:
        """Holds the store's publisher lock (its caller holds this process's, `_lock`), with a
        fencing token taken after it and before anything is read: this publisher's writes are
        refused from the moment another process takes the lock and its token."""
        async with self.store.publishing():
            self._token = await self.data.fence()
            try:
                yield
            finally:
                self._token = None

    async def _publish(self) -> int:
        """`publish` under the locks: the rows committed by this process first, as they were
        committed, then the outbox as it is now (other processes' rows), if it holds any."""
        rows, self._committed = self._committed, []
        try:  # a write finds that out itself: no round trip to ask first
            more = await self._send(rows, into_existing=True, then_all=True) if rows else True
            published = len(rows) + (await self._drain(into_existing=True) if more else 0)
            filled = published > 0 or await self.data.version() is not None
        except NoRoutingData:  # the rows not sent are still in the outbox: `_drain` sends them
            filled = False
        if not filled:
            async with self.store.reading() as q:
                held = [await q.routing_page(kind, None, 1) for kind in KINDS]
            if any(held):
                log.info("Redis holds no routing data: filling it from the store")
                await self._rebuild()
            published = await self._drain()
        self.failing = False
        return published

    async def _write(
        self, changes: Iterable[Stored | Delete], *, into_existing: bool = False
    ) -> list[tuple[str, str]]:
        return await self.data.write(changes, token=self._token, into_existing=into_existing)

    async def _send(
        self, rows: Sequence[Row], *, into_existing: bool = False, then_all: bool = False
    ) -> bool:
        """Publishes outbox rows with the records they were committed with; whether `_drain`
        has to follow: for records Redis refused even as the store holds them now, outranked
        (as in `_drain`), or (`then_all`) for other rows the outbox holds (another process's)."""
        stale = await self._write((change for _, change in rows), into_existing=into_existing)
        if stale:  # a later change of the record came first, or the store is behind Redis
            async with self.store.reading() as q:
                current = await _current(q, [(0, kind, key) for kind, key in stale])
            stale = await self._write(current, into_existing=into_existing)
        seqs, more = [seq for seq, _ in rows], False
        async with self.store.transaction(alone=False) as q:
            if then_all:
                more = await q.published_then_others(seqs)
            else:
                await q.published(seqs)
        await self._outrank_refused(stale)
        return more or bool(stale)

    async def _pending(self) -> int:
        async with self.store.reading() as q:
            return await q.outbox_size()

    async def _drain(self, *, into_existing: bool = False) -> int:
        """Publishes the outbox as it is now. A row committed after the last read is its
        committer's to publish (`after_commit`, which waits for this publisher's lock).
        `into_existing`: NoRoutingData if Redis holds no routing data (nothing published).

        A record Redis refuses because it holds a newer revision is outranked and sent again:
        under the lock, what was just read is the store's latest, so Redis is the one behind
        the truth. It happens when a record was deleted from the store (by hand: the service
        deletes none) and made again, its revision counted anew from 0, or after a restore."""
        published = 0
        while True:
            async with self.store.reading() as q:
                rows = await q.outbox(PUBLISH_BATCH)
                changes = await _current(q, rows)
            stale = await self._write(changes, into_existing=into_existing) if rows else []
            if rows:
                async with self.store.transaction(alone=False) as q:
                    await q.published([seq for seq, _, _ in rows])
                published += len(rows)
            await self._outrank_refused(stale)  # new outbox rows: the loop sends them
            if len(rows) < PUBLISH_BATCH and not stale:
                return published

    async def _outrank_refused(self, stale: list[tuple[str, str]]) -> None:
        for kind in KINDS:
            keys = [key for stale_kind, key in stale if stale_kind == kind]
            if keys:
                await self._outrank(kind, keys)

    async def _rebuild(self) -> SyncReport:
        counts, removed = {}, {}
        for kind in KINDS:
            keys: set[str] = set()
            after = None
            while True:
                async with self.store.reading() as q:
                    page = await q.routing_page(kind, after, REBUILD_BATCH)
                if not page:
                    break
                stale = await self._write(Stored(kind, key, value) for key, value in page)
                await self._outrank_refused(stale)
                keys.update(key for key, _ in page)
                after = page[-1][0]
            counts[kind] = len(keys)
            removed[f"{kind}s"] = await self._remove_others(kind, keys)
        # The first rebuild after the upgrade to the hash tag replaces the old layout: gone.
        old = await self.data.delete_old_layout()
        if old:
            log.info("routing data of the layout before the hash tag deleted", keys=old)
        return SyncReport(counts["account"], counts["number"], counts["campaign"], removed)

    async def _outrank(self, kind: str, keys: list[str]) -> None:
        """Records Redis holds at a newer revision than the store (restored from an older
        copy, or changed meanwhile) get a revision above Redis's; the outbox then sends them."""
        stored = await self.data.redis.hmget(self.data.hashes[kind], keys)
        revs = {key: revision(value) for key, value in zip(keys, stored, strict=True) if value}
        async with self.store.transaction() as q:
            await q.outrank(kind, revs)

    async def _remove_others(self, kind: str, keep: set[str]) -> int:
        """Deletes from Redis the records of `kind` the store does not hold; one created in the
        store meanwhile, or changed in Redis meanwhile, stays."""
        removed = 0
        async for chunk in self.data.scan(kind):
            others = {key: value for key, value in chunk.items() if key not in keep}
            if not others:
                continue
            async with self.store.reading() as q:
                created = await q.routing_values(kind, others)
            gone = [Delete(kind, key, value) for key, value in others.items() if key not in created]
            await self._write(gone)
            removed += len(gone)
        return removed


async def _current(q: Queries, rows: list[tuple[int, str, str]]) -> list[Stored | Delete]:
    """The records the rows name as the store holds them now, in the order first named."""
    wanted: dict[str, list[str]] = defaultdict(list)
    for _, kind, key in rows:
        wanted[kind].append(key)
    found = {kind: await q.routing_values(kind, keys) for kind, keys in wanted.items()}
    changes: list[Stored | Delete] = []
    named = set()
    for _, kind, key in rows:
        if (kind, key) in named:
            continue
        named.add((kind, key))
        value = found[kind].get(key)
        # The service deletes no record: one gone is gone from Redis too.
        changes.append(Stored(kind, key, value) if value else Delete(kind, key))
    return changes
