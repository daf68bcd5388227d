"""Routing data in a real Redis: the write script, the stream of changes, and the engine's
in-memory copy following it (gaps, unreadable changes, an emptied or restored Redis)."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import sys
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from zvonok_agi.app import redis_client
from zvonok_agi.routing.model import (
    Account,
    CallbackRule,
    Campaign,
    CampaignKind,
    Number,
    NumberStatus,
    Pool,
)
from zvonok_agi.store.routing_data import (
    Delete,
    Put,
    RoutingCache,
    RoutingData,
    Table,
    decode,
    encode,
    record_key,
)

ACME = Account("acme", True, "Acme")
SALE = Campaign("sale", "acme", CampaignKind.OUTBOUND, accept_inbound=True)
LINE = Campaign("line", "acme", CampaignKind.INBOUND)
RESERVED = Number("74951234567", Pool.RESERVABLE, owner="acme", inbound_campaign="line")
SERVICE = Number("74950000001", Pool.SERVICE)


@pytest.fixture
async def data(settings):
    client = redis_client(settings.redis.url, settings)
    yield RoutingData(client, settings.redis.key_prefix)
    await client.aclose()


@pytest.fixture
async def cache(data):
    cache = RoutingCache(data, refresh_interval=0.1)
    yield cache
    await cache.stop()


async def world(data: RoutingData) -> None:
    await data.write([Put(ACME), Put(SALE), Put(LINE), Put(RESERVED), Put(SERVICE)])


async def until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def same(snapshot, loaded) -> bool:
    return (snapshot.version, snapshot.accounts, snapshot.numbers, snapshot.campaigns) == (
        loaded.version,
        loaded.accounts,
        loaded.numbers,
        loaded.campaigns,
    )


async def test_every_key_shares_one_hash_tag_for_a_cluster(data, redis):
    await world(data)
    keys = await redis.keys(f"{data.prefix}*")
    assert len(keys) == 5
    assert all(key.startswith(f"{data.prefix}{{routing}}:".encode()) for key in keys)


async def test_records_round_trip_and_every_change_is_one_versioned_entry(data):
    assert await data.version() is None  # nothing written yet
    await world(data)
    loaded = await data.load()
    assert loaded.accounts == {"acme": ACME}
    assert loaded.campaigns == {"sale": SALE, "line": LINE}
    assert loaded.numbers == {RESERVED.did: RESERVED, SERVICE.did: SERVICE}
    first = loaded.version - 4
    changes = await data.changes(first - 1)
    assert [c.version for c in changes] == list(range(first, first + 5))
    assert [(c.kind, c.key) for c in changes][-1] == ("number", SERVICE.did)
    assert changes[-1].record == SERVICE


async def test_a_new_redis_starts_versions_from_the_clock(data):
    # Above any version a reader could hold from a Redis that was emptied since.
    await data.put_account(ACME)
    assert await data.version() > 1_600_000_000_000_000


async def test_the_same_value_again_is_no_change(data):
    await world(data)
    version = await data.version()
    await world(data)
    assert await data.version() == version


async def test_an_older_revision_never_replaces_a_newer_one(data):
    bound = Put(RESERVED, rev=7)
    unbound = Put(replace(RESERVED, inbound_campaign=None), rev=6)
    assert await data.write([bound]) == []
    version = await data.version()
    assert await data.write([unbound]) == [("number", RESERVED.did)]  # refused as stale
    assert await data.version() == version
    assert (await data.load()).numbers[RESERVED.did] == RESERVED
    assert (
        await data.write([Put(replace(RESERVED, callback_rule=CallbackRule.FORCE_NO), 7)]) == []
    )  # the same revision with another state: a repair (`sync`), taken


async def test_a_delete_may_require_the_value_it_saw(data):
    await world(data)
    await data.write([Delete("number", SERVICE.did, expected='[0,"something else"]')])
    assert SERVICE.did in (await data.load()).numbers
    await data.write([Delete("number", SERVICE.did, expected=encode(SERVICE))])
    assert SERVICE.did not in (await data.load()).numbers
    assert (await data.changes(await data.version() - 1))[0].record is None


async def test_a_bad_record_is_skipped_by_a_full_load(data, redis):
    await world(data)
    await redis.hset(data.hashes["number"], "74990000000", '[1,"gold","active",null,"x",null]')
    loaded = await data.load()
    assert loaded.numbers.get("74990000000") is None  # as if unknown: logged once
    assert dict(loaded.numbers.items()) == {RESERVED.did: RESERVED, SERVICE.did: SERVICE}


async def test_a_loaded_copy_gives_the_garbage_collector_nothing_to_walk(data):
    """Half a million records as objects would make each of its full passes ~100 ms long."""
    await world(data)
    loaded = await data.load()
    tables = (loaded.accounts, loaded.numbers, loaded.campaigns)
    assert not any(gc.is_tracked(shard) for table in tables for shard in table._shards)
    assert loaded.service_pool == {SERVICE.did: SERVICE}  # the pool's candidates, decoded


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        "[1]",
        '[1,"service","active",null,"as_campaign",null,"extra"]',
        '[1,"gold","active",null,"as_campaign",null]',
        '[1,"service","active",7,"as_campaign",null]',
        "{}",
        "[1,2,3]",
    ],
)
def test_what_cannot_be_read_is_a_bad_change(value):
    from zvonok_agi.store.routing_data import BadChange

    with pytest.raises(BadChange):
        decode("number", "74950000001", value)


# the engine's copy


async def test_the_copy_follows_each_change_in_place(data, cache):
    await world(data)
    await cache.start()
    numbers = cache.snapshot.numbers
    await data.put_number(replace(RESERVED, callback_rule=CallbackRule.FORCE_YES))
    await until(lambda: numbers[RESERVED.did].callback_rule is CallbackRule.FORCE_YES)
    await data.delete_number(SERVICE.did)
    await until(lambda: SERVICE.did not in numbers)
    assert cache.snapshot.numbers is numbers  # changed in place, no reload
    assert same(cache.snapshot, await data.load())


async def test_random_changes_leave_the_copy_equal_to_redis(data, cache):
    rng = random.Random(5)
    await world(data)
    await cache.start()
    for _ in range(300):
        did = f"7495100{rng.randrange(40):04d}"
        if rng.random() < 0.2:
            change = Delete("number", did)
        else:
            change = Put(
                Number(
                    did,
                    Pool.RESERVABLE,
                    rng.choice(list(NumberStatus)),
                    "acme",
                    rng.choice(list(CallbackRule)),
                    "line",
                )
            )
        await data.write([change])
    expected = await data.load()
    await until(lambda: cache.snapshot.version == expected.version)
    assert same(cache.snapshot, expected)


async def write_unseen(data: RoutingData, redis, records: list, keep: int) -> None:
    """Writes and trims the stream to its last `keep` entries at once: a follower never sees
    the trimmed ones (as when it was away longer than the stream lasts)."""
    changes = [[*record_key(record), encode(record), ""] for record in records]
    async with redis.pipeline(transaction=True) as pipe:
        await data._write(keys=data._keys, args=[1000, json.dumps(changes)], client=pipe)
        pipe.xtrim(data.changes_key, maxlen=keep, approximate=False)
        await pipe.execute()


@pytest.mark.parametrize("keep", [1, 0], ids=["gap", "stream_emptied"])
async def test_changes_gone_from_the_stream_mean_a_full_load(data, redis, cache, keep):
    await world(data)
    await cache.start()
    changed = [
        replace(RESERVED, status=NumberStatus.DISABLED),
        replace(SALE, accept_inbound=False),
        Account("newco", False, "New"),
    ]
    await write_unseen(data, redis, changed, keep)
    await until(lambda: "newco" in cache.snapshot.accounts)
    assert same(cache.snapshot, await data.load())
    assert cache.snapshot.numbers[RESERVED.did].status is NumberStatus.DISABLED


async def test_each_full_load_is_handed_on_once_swapped_in_also_a_reload(data, redis):
    """The engine freezes the heap there (`Engine(own_process=True)`), so that the collector's
    passes never walk the copy."""
    await world(data)
    seen: list[int] = []
    cache = RoutingCache(data, refresh_interval=0.05)
    cache.on_load = lambda: seen.append(cache.snapshot.version)
    try:
        await cache.start()
        assert seen == [cache.snapshot.version]
        await write_unseen(data, redis, [Account("newco", False, "New")], keep=0)
        await until(lambda: "newco" in cache.snapshot.accounts)
        assert len(seen) == 2 and seen[-1] == cache.snapshot.version
    finally:
        await cache.stop()


def test_decoded_ids_are_not_interned():
    """The interpreter's table of interned text would grow and shed ids all day, and be
    resized whole inside a call."""
    interned = sys.intern("".join(["acme", "-east"]))
    number = decode(
        "number", "74951234567", '[1,"reservable","active","acme-east","as_campaign",null]'
    )
    assert number.owner == interned
    assert number.owner is not interned


@pytest.mark.parametrize(
    "entry",
    [
        {"k": "number", "i": SERVICE.did, "v": "garbage"},
        {"k": "tariff", "i": "gold", "v": "[1]"},
        {"k": "number"},
    ],
    ids=["bad_value", "unknown_kind", "missing_fields"],
)
async def test_an_unreadable_change_means_a_full_load_not_a_crash(data, redis, cache, entry):
    await world(data)
    await cache.start()
    version = await data.version()
    reloads = []
    reload = cache.reload

    async def counted() -> None:
        reloads.append(cache.snapshot.version)
        await reload()

    cache.reload = counted
    with capture_logs() as logs:
        # in one read: a good change, the bad entry, then a good change behind them
        good = json.dumps([["account", "first", encode(Account("first")), ""]])
        async with redis.pipeline(transaction=True) as pipe:
            await data._write(keys=data._keys, args=[1000, good], client=pipe)
            pipe.xadd(data.changes_key, entry, id=f"{version + 2}-0")
            pipe.set(data.version_key, version + 2)
            await pipe.execute()
        await data.put_account(Account("newco"))
        await until(lambda: "newco" in cache.snapshot.accounts)
    # the batch with the bad entry was not applied in part: the copy was loaded anew instead
    assert reloads == [version]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "unreadable routing change; loading everything again"
    ]
    assert same(cache.snapshot, await data.load())
    assert "first" in cache.snapshot.accounts
    assert cache._task is not None and not cache._task.done()


async def test_an_emptied_redis_leaves_the_copy_until_it_is_filled_again(data, redis, cache):
    await world(data)
    await cache.start()
    await redis.delete(data.version_key, data.changes_key, *data.hashes.values())
    await asyncio.sleep(0.5)  # several version checks
    assert cache.snapshot.numbers[RESERVED.did] == RESERVED  # still routing by the copy
    await data.write([Put(ACME), Put(LINE), Put(SERVICE)])  # `sync` from a store without SALE
    await until(lambda: "sale" not in cache.snapshot.campaigns)
    assert same(cache.snapshot, await data.load())


async def test_a_version_gone_back_means_a_full_load(data, redis, cache):
    await world(data)
    await cache.start()
    version = await data.version()
    async with redis.pipeline(transaction=True) as pipe:  # Redis restored from an older copy
        pipe.hdel(data.hashes["number"], SERVICE.did)
        pipe.set(data.version_key, version - 3)
        pipe.xdel(data.changes_key, *[f"{v}-0" for v in range(version - 2, version + 1)])
        await pipe.execute()
    await until(lambda: SERVICE.did not in cache.snapshot.numbers)
    assert cache.snapshot.version == version - 3


async def test_the_copy_starts_empty_handed_while_redis_is_away_then_loads(settings, data):
    await world(data)
    away = RoutingData(redis_client("redis://127.0.0.1:1", settings), data.prefix)
    cache = RoutingCache(away, refresh_interval=0.05)
    try:
        await cache.start()
        assert cache.snapshot.version == -1  # calls get the engine_error route meanwhile
        cache.data = data
        await until(lambda: cache.snapshot.version >= 0)
        assert cache.snapshot.numbers[RESERVED.did] == RESERVED
    finally:
        await cache.stop()
        await away.redis.aclose()


def test_stored_values_are_json_arrays_led_by_the_revision():
    assert json.loads(encode(RESERVED, 12)) == [
        12,
        "reservable",
        "active",
        "acme",
        "as_campaign",
        "line",
    ]
    assert decode("number", RESERVED.did, encode(RESERVED, 12)) == RESERVED
    assert decode("campaign", "sale", encode(SALE)) == SALE
    assert decode("account", "acme", encode(ACME)) == ACME


async def test_a_replaced_copy_is_kept_for_the_calls_reading_it_then_emptied(
    data, cache, monkeypatch
):
    monkeypatch.setattr("zvonok_agi.store.routing_data.RELEASE_AFTER", 0.1)
    await world(data)
    await cache.start()
    old = cache.snapshot
    await cache.reload()
    assert cache.snapshot is not old
    assert old.numbers[RESERVED.did] == RESERVED  # a call that began on it still reads it
    await until(lambda: len(old.numbers) == 0)  # then freed a shard at a time
    assert cache.snapshot.numbers[RESERVED.did] == RESERVED


async def test_a_read_of_named_records_brings_only_those(data):
    await world(data)
    some = await data.read({"number": [RESERVED.did, "74990000000"], "campaign": []})
    assert some.version == await data.version()
    assert dict(some.numbers.items()) == {RESERVED.did: RESERVED}
    assert len(some.campaigns) == len(some.accounts) == 0
    await data.read({"campaign": {LINE.id, "gone"}}, some)
    assert dict(some.campaigns.items()) == {LINE.id: LINE}


# the records kept decoded


def stored_number(did: str, rule: CallbackRule) -> str:
    return encode(Number(did, Pool.RESERVABLE, owner="acme", callback_rule=rule))


def test_a_record_read_again_is_decoded_once_until_its_value_changes():
    table = Table("number")
    table.put(RESERVED.did, stored_number(RESERVED.did, CallbackRule.AS_CAMPAIGN))
    first = table[RESERVED.did]
    assert table.get(RESERVED.did) is first  # not decoded again
    table.put(RESERVED.did, stored_number(RESERVED.did, CallbackRule.FORCE_NO))
    assert table[RESERVED.did].callback_rule is CallbackRule.FORCE_NO
    del table[RESERVED.did]
    assert table.get(RESERVED.did) is None
    with pytest.raises(KeyError):
        table[RESERVED.did]


def test_reads_always_give_the_current_value_whatever_was_kept():
    rng = random.Random(11)
    table = Table("number")
    table.DECODED = 8  # fewer than the keys: records are pushed out and decoded again
    current: dict[str, str] = {}
    for _ in range(3000):
        did = f"7495100{rng.randrange(20):04d}"
        if rng.random() < 0.3:
            current[did] = stored_number(did, rng.choice(list(CallbackRule)))
            table.put(did, current[did])
        elif rng.random() < 0.1 and did in current:
            del current[did], table[did]
        else:
            expected = decode("number", did, current[did]) if did in current else None
            assert table.get(did) == expected
        assert len(table._decoded) <= table.DECODED


def test_going_through_every_record_keeps_none_of_them_decoded():
    """A status page or a fallback listing the whole table must not push the calls' records
    out."""
    table = Table("number")
    for i in range(50):
        did = f"74951000{i:03d}"
        table.put(did, stored_number(did, CallbackRule.AS_CAMPAIGN))
    hot = table["74951000007"]
    assert len(dict(table.items())) == 50
    assert list(table._decoded) == ["74951000007"]
    assert table["74951000007"] is hot


def test_a_bad_record_is_absent_and_logged_once_however_often_it_is_read():
    table = Table("number")
    table.put("74950000001", "not json")
    with capture_logs() as logs:
        assert table.get("74950000001") is None
        assert table.get("74950000001") is None
        assert "74950000001" not in dict(table.items())
    assert [entry["event"] for entry in logs] == ["bad routing record skipped"]
