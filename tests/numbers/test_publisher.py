"""The transactional outbox: changes reach Redis only after their commit, outside the store's
lock, idempotently, whoever publishes; what Redis missed follows when it is back."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os

import asyncpg
import pytest

from numbers_helpers import (
    ACME,
    MOSCOW_1,
    MOSCOW_2,
    OLDCO,
    control_plane,
    refused,
    released,
    small_world,
)
from zvonok_agi.app import redis_client
from zvonok_agi.numbers.databases import sqlite_path
from zvonok_agi.numbers.importer import read_file
from zvonok_agi.numbers.postgresql import lock_key
from zvonok_agi.numbers.publisher import Publisher
from zvonok_agi.numbers.service import NumbersService
from zvonok_agi.numbers.store import Store, StoreUnavailable
from zvonok_agi.routing.model import CallbackRule, Number, Pool
from zvonok_agi.store.routing_data import Delete, Put, RoutingData, Superseded
from zvonok_agi.tasks import cancel_and_wait


@pytest.fixture
async def service(settings, store_url):
    async with control_plane(settings, store_url) as svc:
        await small_world(svc)
        await svc.reserve("web", ACME, MOSCOW_1)
        yield svc


async def routing_of(service) -> tuple[dict, dict]:
    """The routing records in the store, and in Redis."""
    async with service.store.reading() as q:
        stored = (
            {a.id: a for a in await q.accounts()},
            {n.did: n.routing() for n in await q.numbers()},
            {c.id: c for c in await q.campaigns()},
        )
    loaded = await service.data.load()
    return stored, (loaded.accounts, loaded.numbers, loaded.campaigns)


async def until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.02)


async def test_redis_is_written_after_the_commit_never_under_the_store_lock(service):
    store, data = service.store, service.publisher.data
    write = data.write
    seen = []

    async def checked_write(changes, **fenced):
        seen.append(store.open_transactions)
        return await write(changes, **fenced)

    data.write = checked_write
    await service.set_rule("web", MOSCOW_1, "force_no")
    await service.create_campaign("web", "acme-more", ACME, "inbound")
    assert seen == [0, 0]
    assert (await data.load()).numbers[MOSCOW_1].callback_rule is CallbackRule.FORCE_NO


async def test_a_change_that_fails_before_its_commit_never_reaches_redis(service, monkeypatch):
    version = await service.data.version()

    async def broken_audit(*args, **kwargs):
        raise StoreUnavailable("disk I/O error")

    monkeypatch.setattr("zvonok_agi.numbers.store.Queries.audit", broken_audit)
    with pytest.raises(StoreUnavailable):
        await service.set_rule("web", MOSCOW_1, "force_no")
    monkeypatch.undo()
    assert await service.pending() == 0
    assert await service.data.version() == version
    stored, published = await routing_of(service)
    assert stored == published
    assert stored[1][MOSCOW_1].callback_rule is CallbackRule.AS_CAMPAIGN


async def test_the_publisher_sends_what_redis_missed_once_it_is_back(service, settings):
    publisher = service.publisher
    real = publisher.data
    publisher.data = RoutingData(redis_client("redis://127.0.0.1:1", settings), real.prefix)
    publisher.retry = publisher.max_retry = 0.05
    running = asyncio.create_task(publisher.run())
    try:
        await service.set_rule("web", MOSCOW_1, "force_yes")  # committed, Redis away
        await service.bind("web", MOSCOW_1, "acme-line")
        assert await service.pending() == 2
        assert publisher.failing
        await publisher.data.redis.aclose()
        publisher.data = real  # Redis is back

        async def published() -> bool:  # and the publisher knows it is through
            return await service.pending() == 0 and not publisher.failing

        await until(published)
    finally:
        await cancel_and_wait(running)
    number = (await real.load()).numbers[MOSCOW_1]
    assert (number.callback_rule, number.inbound_campaign) == (CallbackRule.FORCE_YES, "acme-line")


def stalled_writes(data: RoutingData) -> tuple[RoutingData, asyncio.Event, asyncio.Event]:
    """A copy of `data` whose writes say they are reached, then wait until released."""
    reached, release = asyncio.Event(), asyncio.Event()
    slow = RoutingData(data.redis, data.prefix)
    write = slow.write

    async def stalled(changes, **fenced):
        changes = list(changes)
        reached.set()
        await release.wait()
        return await write(changes, **fenced)

    slow.write = stalled
    return slow, reached, release


async def test_one_process_publishes_at_a_time_and_the_next_change_goes_out_after_it(
    service, settings, store_url
):
    """A publisher reads a state, then stalls before writing it; a change another process makes
    meanwhile waits for it, then reaches Redis after it: Redis ends with the newer state."""
    quiet = NumbersService(service.store, None)  # commits, publishes nothing
    await quiet.set_rule("web", MOSCOW_1, "force_yes")
    data, reached, release = stalled_writes(service.data)
    stalled_publish = asyncio.create_task(Publisher(service.store, data).publish())
    await reached.wait()  # it has read the outbox: force_yes
    async with control_plane(settings, store_url) as other:  # another process
        change = asyncio.create_task(other.set_rule("web", MOSCOW_1, "force_no"))

        async def committed() -> bool:
            return await service.pending() == 2

        await until(committed)
        await asyncio.sleep(0.1)
        assert not change.done()  # committed, waiting for the publisher's lock
        release.set()
        await stalled_publish
        await change
    stored, published = await routing_of(service)
    assert published[1][MOSCOW_1].callback_rule is CallbackRule.FORCE_NO
    assert stored == published
    assert await service.pending() == 0


async def test_a_publisher_that_lost_its_lock_never_puts_an_older_state_over_a_newer_one(
    service, settings, store_url
):
    """Its link to the store cut while its write was on the way to Redis, a publisher no longer
    holds the lock: another one publishes a newer state first. The late write is refused."""
    quiet = NumbersService(service.store, None)
    await quiet.set_rule("web", MOSCOW_1, "force_yes")
    data, reached, release = stalled_writes(service.data)
    async with await Store.open(store_url) as lost:
        lost.publishing = contextlib.nullcontext  # as if its lock were gone
        stalled_publish = asyncio.create_task(Publisher(lost, data).publish())
        await reached.wait()  # it has read the outbox: force_yes
        async with control_plane(settings, store_url) as other:  # another process
            await other.set_rule("web", MOSCOW_1, "force_no")  # published at once
        release.set()
        with pytest.raises(Superseded):  # refused whole: the rows stay for the next publisher
            await stalled_publish
    stored, published = await routing_of(service)
    assert published[1][MOSCOW_1].callback_rule is CallbackRule.FORCE_NO
    assert stored == published
    assert await service.pending() == 0


@pytest.mark.parametrize("late", ["delete", "put"])
async def test_a_late_write_of_a_publisher_whose_lock_was_taken_over_is_refused(
    service, store_url, late
):
    """The race a revision cannot settle: a record deleted from the store and made again
    counts its revision anew. Publisher A holds the lock and reads the outbox (the record
    deleted, or its last state before that), then stalls; its lock is lost and the record is
    made again, which publisher B, now holding the lock, publishes. A's write arrives late:
    Redis refuses it by A's fencing token, and keeps the record as the store holds it."""
    await service.create_account("web", "temp", "Temp")  # in Redis at revision 1
    if late == "delete":
        await _by_hand(store_url, "DELETE FROM accounts WHERE id = 'temp'")
    else:  # its state before it is deleted, at a revision above the one it is made again at
        await NumbersService(service.store, None).update_account("web", "temp", name="Old")
    data, reached, release = stalled_writes(service.data)
    async with await Store.open(store_url) as a_store:
        publisher_a = asyncio.create_task(Publisher(a_store, data).publish())
        await reached.wait()  # A has read the outbox
        await _lose_the_publishers_lock(store_url)
        if late == "put":
            await _by_hand(store_url, "DELETE FROM accounts WHERE id = 'temp'")
        await service.create_account("web", "temp", "Made again")  # B publishes it
        assert (await service.data.load()).accounts["temp"].name == "Made again"
        release.set()
        [a_ended] = await asyncio.gather(publisher_a, return_exceptions=True)
    stored, published = await routing_of(service)
    assert published[0]["temp"].name == "Made again"
    assert stored == published
    assert await service.pending() == 0
    assert isinstance(a_ended, Superseded)  # refused whole


async def test_a_write_with_an_older_fencing_token_changes_nothing(service, redis):
    data = service.data
    old, new = await data.fence(), await data.fence()
    assert new > old
    version = await data.version()
    late = [Put(Number(MOSCOW_2, Pool.RESERVABLE, owner=OLDCO), rev=50)]
    with pytest.raises(Superseded, match=f"fencing token {old} is older than {new}"):
        await data.write(late, token=old)
    assert await data.version() == version
    assert (await data.load()).numbers[MOSCOW_2].owner is None
    # Redis lost the fence (emptied, or a failover lost its last write): a token taken after
    # is above every one before, and its first write puts the fence back.
    await redis.delete(data.fence_key)
    newer = await data.fence()
    assert newer > new
    await redis.delete(data.fence_key)
    assert await data.write([Delete("account", "nobody")], token=newer) == []
    with pytest.raises(Superseded):
        await data.write(late, token=new)
    assert await data.write(late) == []  # a write without a store (`load`) is not fenced


async def test_a_sync_whose_lock_was_taken_over_stops_and_says_so(service):
    data, reached, release = stalled_writes(service.data)
    service.publisher.data = data
    sync = asyncio.create_task(service.sync("cli"))
    await reached.wait()
    await service.data.fence()  # as another process that took the lock does
    release.set()
    refusal = await refused("conflict", sync)
    assert "another process took over publishing during the sync" in refusal.message


async def _by_hand(store_url: str, statement: str) -> None:
    """A change made outside the service (which deletes no record), named in the outbox."""
    async with await Store.open(store_url) as by_hand, by_hand.transaction() as q:
        await q.db.run(statement)
        await q.db.run("INSERT INTO outbox (kind, key) VALUES ('account', 'temp')")


async def _lose_the_publishers_lock(store_url: str) -> None:
    """The publisher's lock is gone from under its holder: on PostgreSQL its session is ended
    (as a lost link ends it); on SQLite its flock is released (a SQLite file's lock is lost
    only with its process, so this is as if)."""
    if store_url.startswith("postgresql:"):
        db = await asyncpg.connect(store_url)
        try:
            schema = await db.fetchval("SELECT current_schema()")
            key = lock_key(schema, "publisher") % 2**64  # pg_locks shows it as two halves
            holders = await db.fetch(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = $1 AND objid = $2 AND objsubid = 1",
                key >> 32,
                key % 2**32,
            )
            assert len(holders) == 1
            assert await db.fetchval("SELECT pg_terminate_backend($1)", holders[0]["pid"])
        finally:
            await db.close()
        return
    lock_file = os.path.realpath(f"{sqlite_path(store_url)}-publish")
    held = [
        int(fd)
        for fd in os.listdir("/proc/self/fd")
        if os.path.realpath(f"/proc/self/fd/{fd}") == lock_file
    ]
    assert len(held) == 1
    fcntl.flock(held[0], fcntl.LOCK_UN)


async def test_an_emptied_redis_is_filled_from_the_store_by_the_next_publish(service, redis):
    data = service.data
    await redis.delete(data.version_key, data.changes_key, *data.hashes.values())
    await service.bind("web", MOSCOW_1, "acme-line")  # any change
    stored, published = await routing_of(service)
    assert stored == published
    assert len(published[1]) == 6


async def test_sync_puts_the_store_over_a_redis_that_is_ahead_of_it(service):
    """A store restored from an older copy: Redis holds newer revisions of some records."""
    data = service.data
    assert await data.write([Put(Number(MOSCOW_2, Pool.RESERVABLE, owner=OLDCO), rev=50)]) == []
    assert (await data.load()).numbers[MOSCOW_2].owner == OLDCO
    await service.sync("cli")
    stored, published = await routing_of(service)
    assert stored == published
    assert published[1][MOSCOW_2].owner is None


async def test_a_store_with_rows_left_by_an_older_release_publishes_them(settings, store_url):
    await released(  # the second release, a change Redis never got
        store_url,
        2,
        "INSERT INTO accounts (id, name, verified, created_at) VALUES ('acme', 'Acme', 1, 1)",
        "INSERT INTO outbox (kind, key) VALUES ('account', 'acme')",
    )
    async with control_plane(settings, store_url) as service:
        assert await service.pending() == 1
        await service.publisher.publish()
        assert await service.pending() == 0
        assert (await service.data.load()).accounts["acme"].name == "Acme"
    async with await Store.open(store_url) as store, store.transaction() as q:
        await q.touch("account", "acme")
        assert [seq for seq, _, _ in await q.outbox(10)] == [2]  # seqs never used twice


@pytest.mark.parametrize("how", ["change", "import"])
async def test_a_record_deleted_and_made_again_reaches_redis_though_its_revision_began_anew(
    service, store_url, tmp_path, how
):
    """The service deletes no record, but somebody may, by hand: the one made again under the
    same key counts its revision from 0, below what Redis holds of the old one. Redis refuses
    it at first; the publisher then outranks it, and Redis takes it."""
    for name in ("Temp 1", "Temp 2", "Temp 3"):  # Redis holds "temp" at revision 3
        if name == "Temp 1":
            await service.create_account("web", "temp", name)
        else:
            await service.update_account("web", "temp", name=name)
    assert (await service.data.load()).accounts["temp"].name == "Temp 3"
    async with await Store.open(store_url) as by_hand, by_hand.transaction() as q:
        await q.db.run("DELETE FROM audit WHERE subject = 'temp'")
        await q.db.run("DELETE FROM accounts WHERE id = 'temp'")
    if how == "change":
        await service.create_account("web", "temp", "Made again")
    else:
        inventory = tmp_path / "again.toml"
        inventory.write_text('[[accounts]]\nid = "temp"\nname = "Made again"\n')
        await service.import_inventory("cli", *read_file(inventory))
    stored, published = await routing_of(service)
    assert published[0]["temp"].name == "Made again"
    assert stored == published
    assert await service.pending() == 0


async def test_the_first_fill_after_the_upgrade_deletes_the_old_layout(service, redis):
    """Releases before the hash tag kept `zv:number:<did>` hashes, `zv:numbers` sets and
    `zv:routing:version`; once the new keys are filled from the store, they are gone."""
    data = service.data
    p = data.prefix
    old = {
        f"{p}number:{MOSCOW_1}": "hash",
        f"{p}number:{MOSCOW_2}": "hash",
        f"{p}account:{ACME}": "hash",
        f"{p}campaign:acme-line": "hash",
        f"{p}numbers": "set",
        f"{p}accounts": "set",
        f"{p}campaigns": "set",
        f"{p}routing:version": "string",
    }
    others = [
        f"{p}number:{MOSCOW_1}:note",
        f"{p}hist:{{79161234567}}:{MOSCOW_1}",
        f"{p}dialer:{{acme-out}}:queue",
        "other:number:74950000000",
    ]
    for key, kind in old.items():
        if kind == "hash":
            await redis.hset(key, mapping={"pool": "reservable", "status": "active"})
        elif kind == "set":
            await redis.sadd(key, "x")
        else:
            await redis.set(key, 7)
    for key in others:
        await redis.set(key, "kept")
    await redis.delete(data.version_key, data.changes_key, *data.hashes.values())
    await service.bind("web", MOSCOW_1, "acme-line")  # any change: Redis is filled first
    stored, published = await routing_of(service)
    assert stored == published
    assert [key for key in old if await redis.exists(key)] == []
    assert [key for key in others if await redis.exists(key)] == others
    for key in old:  # an old engine writing on: `sync` deletes it again
        await redis.set(key, 1)
    await service.sync("cli")
    assert [key for key in old if await redis.exists(key)] == []


async def test_an_emptied_redis_is_filled_from_the_store_with_no_change(service, redis):
    """The admin server's publisher, every few seconds, with nothing in the outbox."""
    data = service.data
    await redis.delete(data.version_key, data.changes_key, *data.hashes.values())
    await service.publisher.publish()
    stored, published = await routing_of(service)
    assert stored == published
    assert len(published[1]) == 6


async def test_an_import_into_a_redis_emptied_meanwhile_fills_it_from_the_store(
    service, redis, tmp_path, monkeypatch
):
    """Redis restarted without its data between two batches of an import: the next batch's
    publish fills it with all the store holds, not with that batch alone."""
    monkeypatch.setattr("zvonok_agi.numbers.service.IMPORT_BATCH", 2)
    data, publish_rows, batches = service.data, service.publisher.publish_rows, []

    async def emptied_after_the_first_batch(rows) -> None:
        batches.append(rows)
        if len(batches) == 2:
            await redis.delete(data.version_key, data.changes_key, *data.hashes.values())
        await publish_rows(rows)

    monkeypatch.setattr(service.publisher, "publish_rows", emptied_after_the_first_batch)
    inventory = tmp_path / "more.jsonl"
    inventory.write_text(
        f'{{"account": {{"id": "{ACME}", "verified": true}}}}\n'
        + "".join(
            f'{{"number": {{"did": "749511100{i:02d}", "owner": "{ACME}"}}}}\n' for i in range(5)
        )
    )
    await service.import_inventory("cli", *read_file(inventory))
    assert len(batches) == 4  # the account, then the numbers two by two
    stored, published = await routing_of(service)
    assert stored == published
    assert {f"749511100{i:02d}" for i in range(5)} <= set(published[1])
    assert await service.pending() == 0


async def test_a_change_asks_redis_nothing_before_its_write(service, redis):
    """The write itself finds out whether Redis holds routing data (else the store fills it
    first): no round trip to ask before each change, only the fencing token's."""
    sent: list[str] = []
    execute = service.data.redis.execute_command

    async def counted(*args, **options):
        sent.append(str(args[0]))
        return await execute(*args, **options)

    service.data.redis.execute_command = counted
    await service.set_rule("web", MOSCOW_1, "force_no")
    assert sent == ["EVALSHA", "EVALSHA"]  # the fencing token, the write
    assert (await service.data.load()).numbers[MOSCOW_1].callback_rule is CallbackRule.FORCE_NO


async def test_changes_committed_while_one_is_published_go_out_with_it(service, redis):
    """One lock, one fencing token, one write for the changes of a process that committed while
    another of its changes was being published: each as it was committed, in that order."""
    sent: list[str] = []
    execute = service.data.redis.execute_command
    fence, fenced, release = service.data.fence, asyncio.Event(), asyncio.Event()

    async def counted(*args, **options):
        sent.append(str(args[0]))
        return await execute(*args, **options)

    async def stalled_fence() -> int:
        fenced.set()
        await release.wait()
        return await fence()

    service.data.redis.execute_command = counted
    service.data.fence = stalled_fence
    first = asyncio.create_task(service.set_rule("web", MOSCOW_1, "force_no"))
    await fenced.wait()  # committed; its publisher waits for its token
    others = [
        asyncio.create_task(service.set_rule("web", MOSCOW_1, rule))
        for rule in ("force_yes", "as_campaign")
    ]

    async def committed() -> bool:
        return await service.pending() == 3

    await until(committed)
    release.set()
    await asyncio.gather(first, *others)
    assert sent == ["EVALSHA", "EVALSHA"]  # one token, one write
    stored, published = await routing_of(service)
    assert stored == published  # the last committed of the three
    assert await service.pending() == 0
