"""The transactional outbox: changes reach Redis only after their commit, outside the store's
lock, idempotently, whoever publishes; what Redis missed follows when it is back."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from numbers_helpers import ACME, MOSCOW_1, MOSCOW_2, OLDCO, control_plane, small_world
from zvonok_agi.app import redis_client
from zvonok_agi.numbers.migrations import MIGRATIONS
from zvonok_agi.numbers.publisher import Publisher
from zvonok_agi.numbers.service import NumbersService
from zvonok_agi.numbers.store import Store
from zvonok_agi.routing.model import CallbackRule, Number, Pool
from zvonok_agi.store.routing_data import Put, RoutingData
from zvonok_agi.tasks import cancel_and_wait


@pytest.fixture
async def service(settings, tmp_path):
    async with control_plane(settings, tmp_path / "numbers.db") as svc:
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

    async def checked_write(changes):
        seen.append((store._lock.locked(), store._db.in_transaction))
        return await write(changes)

    data.write = checked_write
    await service.set_rule("web", MOSCOW_1, "force_no")
    await service.create_campaign("web", "acme-more", ACME, "inbound")
    assert seen == [(False, False), (False, False)]
    assert (await data.load()).numbers[MOSCOW_1].callback_rule is CallbackRule.FORCE_NO


async def test_a_change_that_fails_before_its_commit_never_reaches_redis(service, monkeypatch):
    version = await service.data.version()

    async def broken_audit(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr("zvonok_agi.numbers.store.Queries.audit", broken_audit)
    with pytest.raises(sqlite3.OperationalError):
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


async def test_two_publishers_never_put_an_older_state_over_a_newer_one(
    service, settings, tmp_path
):
    """One publisher reads a state, then stalls before writing it; meanwhile the record
    changes again and another publisher sends the newer state. The stalled write is refused."""
    slow = Publisher(service.store, service.data)
    release = asyncio.Event()
    write = slow.data.write

    async def stalled(changes):
        changes = list(changes)
        await release.wait()
        return await write(changes)

    quiet = NumbersService(service.store, None)  # commits, publishes nothing
    await quiet.set_rule("web", MOSCOW_1, "force_yes")
    slow.data = RoutingData(service.data.redis, service.data.prefix)
    slow.data.write = stalled
    stalled_publish = asyncio.create_task(slow.publish())
    await asyncio.sleep(0.1)  # it has read the outbox: force_yes
    async with control_plane(settings, tmp_path / "numbers.db") as other:  # another process
        await other.set_rule("web", MOSCOW_1, "force_no")  # published at once
    release.set()
    await stalled_publish
    stored, published = await routing_of(service)
    assert published[1][MOSCOW_1].callback_rule is CallbackRule.FORCE_NO
    assert stored == published
    assert await service.pending() == 0


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


async def test_a_store_with_rows_left_by_an_older_release_publishes_them(settings, tmp_path):
    path = tmp_path / "numbers.db"
    with sqlite3.connect(path) as db:  # the second release, a change Redis never got
        for migration in MIGRATIONS[:2]:
            for statement in migration:
                db.execute(statement)
        db.execute("PRAGMA user_version = 2")
        db.execute(
            "INSERT INTO accounts (id, name, verified, created_at) VALUES ('acme', 'Acme', 1, 1)"
        )
        db.execute("INSERT INTO outbox (kind, key) VALUES ('account', 'acme')")
    async with control_plane(settings, path) as service:
        assert await service.pending() == 1
        await service.publisher.publish()
        assert await service.pending() == 0
        assert (await service.data.load()).accounts["acme"].name == "Acme"
    async with await Store.open(path) as store, store.transaction() as q:
        await q.touch("account", "acme")
        assert [seq for seq, _, _ in await q.outbox(10)] == [2]  # seqs never used twice


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
