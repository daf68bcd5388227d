"""The service layer on a real store (SQLite and PostgreSQL) and a real Redis: routing-rules.md,
"Reserving and binding" and "Caller ID for outbound calls" (rules 1-2)."""

from __future__ import annotations

import asyncio

import pytest

from numbers_helpers import (
    ACME,
    KAZAN,
    MOBILE,
    MOSCOW_1,
    MOSCOW_2,
    NEWBIE,
    OLDCO,
    POOL_1,
    control_plane,
    refused,
    released,
    small_world,
    table,
)
from zvonok_agi.app import redis_client
from zvonok_agi.numbers.migrations import MIGRATIONS
from zvonok_agi.numbers.rules import Refused
from zvonok_agi.numbers.store import Store
from zvonok_agi.routing.model import CallbackRule, Number, NumberStatus, Pool
from zvonok_agi.store.routing_data import RoutingData


@pytest.fixture
async def service(settings, store_url):
    async with control_plane(settings, store_url) as svc:
        await small_world(svc)
        yield svc


async def published(service) -> dict:
    return (await service.data.load()).numbers


# the store


TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgresql": "SELECT table_name FROM information_schema.tables "
                  "WHERE table_schema = current_schema()",
}


async def version(store_url: str) -> int:
    async with await Store.open(store_url) as store, store.reading() as q:
        return await store.database.schema_version(q.db)


async def test_a_new_store_is_migrated_and_reopening_changes_nothing(store_url):
    async with await Store.open(store_url) as store:
        kind = store.database.name
    assert await version(store_url) == len(MIGRATIONS)
    names = {row[0] for row in await table(store_url, TABLES[kind])}
    assert {"accounts", "numbers", "campaigns", "requests", "audit", "outbox"} <= names


async def test_a_new_sqlite_file_gets_its_folder_and_the_wal(tmp_path):
    path = tmp_path / "sub" / "numbers.db"
    async with await Store.open(path):
        pass
    assert await table(path, "PRAGMA journal_mode") == [("wal",)]


async def test_a_store_of_the_first_release_is_brought_up_to_date(store_url):
    await released(  # as the first release left it: one migration
        store_url, 1,
        "INSERT INTO accounts (id, created_at) VALUES ('acme', 1)",
        "INSERT INTO requests (account, kind, region, at) VALUES ('acme', 'mobile', 'Russia', 2)",
    )
    async with await Store.open(store_url) as store:
        async with store.reading() as q:
            [request] = await q.requests()
        async with store.transaction() as q:  # the copied ids are not given again
            later = await q.add_request("acme", None, None, 3, topic="support", comment="hi")
    assert await version(store_url) == len(MIGRATIONS)
    assert (request.status, request.closed_at, request.closed_by, request.note) == (
        "open", None, None, None)
    assert later.id > request.id


# the reservation flow


async def test_regions_per_choice_with_available_counts(service):
    popular = await service.regions("landline_popular")
    assert [(r.region, r.available) for r in popular][:6] == [
        ("Moscow", 2), ("St Petersburg", 0), ("Novosibirsk", 0), ("Ekaterinburg", 0),
        ("Kazan", 1), ("Nizhni Novgorod", 0),
    ]
    anywhere = await service.regions("landline")
    assert [(r.region, r.available) for r in anywhere] == [("Kazan", 1), ("Moscow", 2)]
    assert [(r.region, r.available) for r in await service.regions("mobile")] == [("Russia", 1)]
    await refused("bad_input", service.regions("fax"))


async def test_region_then_number_then_reserve(service):
    offer = await service.offer("web", ACME, "landline_popular", "Moscow")
    assert [n.did for n in offer.numbers] == [MOSCOW_1, MOSCOW_2]
    assert offer.request is None
    number = await service.reserve("web", ACME, "+7 (495) 111-00-01")
    assert (number.owner, number.callback_rule, number.status) == (ACME, "as_campaign", "active")
    assert (await published(service))[MOSCOW_1].owner == ACME  # the engine sees it
    again = await service.offer("web", ACME, "landline", "Moscow")
    assert [n.did for n in again.numbers] == [MOSCOW_2]
    assert (await service.regions("landline_popular"))[0].available == 1
    await refused("already_yours", service.reserve("web", ACME, MOSCOW_1))
    await refused("already_taken", service.reserve("web", OLDCO, MOSCOW_1))
    await refused("not_reservable", service.reserve("web", ACME, POOL_1))
    await refused("unknown_number", service.reserve("web", ACME, "74990000000"))
    await refused("bad_number", service.reserve("web", ACME, "not a number"))


async def test_an_unverified_account_is_refused_and_keeps_the_pool(service):
    error = await refused("not_verified", service.reserve("web", NEWBIE, MOSCOW_1))
    assert "service pool" in error.message
    await refused("not_verified", service.offer("web", NEWBIE, "mobile", "Russia"))
    assert (await service.number(MOSCOW_1)).row.number.owner is None
    log = await service.audit_log(MOSCOW_1)
    assert (log[0]["action"], log[0]["outcome"], log[0]["account"]) == (
        "reserve", "not_verified", NEWBIE)


async def test_twenty_accounts_race_for_one_number_on_twenty_connections(settings, store_url):
    async with control_plane(settings, store_url) as service:
        await small_world(service)
        for i in range(20):
            await service.create_account("test", f"racer-{i}", verified=True)

    async def attempt(i: int):
        async with control_plane(settings, store_url) as own:  # its own connection
            try:
                return await own.reserve("web", f"racer-{i}", MOSCOW_1)
            except Refused as exc:
                return exc

    results = await asyncio.gather(*(attempt(i) for i in range(20)))
    winners = [r for r in results if not isinstance(r, Refused)]
    losers = [r for r in results if isinstance(r, Refused)]
    assert len(winners) == 1
    assert {r.code for r in losers} == {"already_taken"}
    assert all("already taken" in r.message for r in losers)
    [(owner,)] = await table(store_url, f"SELECT owner FROM numbers WHERE did = '{MOSCOW_1}'")
    assert owner == winners[0].owner
    outcomes = await table(store_url, "SELECT outcome FROM audit WHERE action = 'reserve'")
    assert sorted(o for (o,) in outcomes) == ["already_taken"] * 19 + ["ok"]


async def test_an_empty_region_files_one_request_and_changes_nothing_else(service, store_url):
    version = await service.data.version()
    before = await table(store_url, "SELECT * FROM numbers ORDER BY did")
    offer = await service.offer("web", ACME, "landline_popular", "St Petersburg")
    assert offer.numbers == [] and offer.request is not None
    assert "sales team will call you back" in offer.message
    again = await service.offer("web", ACME, "landline_popular", "St Petersburg")
    assert again.request == offer.request  # still open: not filed twice
    [request] = await service.requests()
    assert (request.account, request.kind, request.region) == (ACME, "landline", "St Petersburg")
    assert await table(store_url, "SELECT * FROM numbers ORDER BY did") == before
    assert await service.data.version() == version


# requests: sales close them


async def test_sales_close_a_request_and_the_next_ask_files_a_new_one(service):
    offer = await service.offer("web", ACME, "landline_popular", "St Petersburg")
    version = await service.data.version()
    service.clock = lambda: 1_700_000_000.0
    closed = await service.close_request("cli:ann", str(offer.request.id), " called, wants 2 ")
    assert (closed.id, closed.status, closed.closed_at, closed.closed_by, closed.note) == (
        offer.request.id, "closed", 1_700_000_000.0, "cli:ann", "called, wants 2")
    assert await service.requests() == []
    assert await service.requests("closed") == [closed]
    assert await service.data.version() == version  # nothing for the engine
    [entry, *_] = await service.audit_log(f"request:{closed.id}")
    assert (entry["action"], entry["outcome"], entry["actor"], entry["account"]) == (
        "close_request", "ok", "cli:ann", ACME)
    assert entry["detail"] == {"note": "called, wants 2"}
    again = await service.offer("web", ACME, "landline_popular", "St Petersburg")
    assert again.request.id != closed.id and again.request.status == "open"
    plain = await service.close_request("web", again.request.id)  # no note: none kept
    assert (plain.status, plain.note) == ("closed", None)
    assert (await service.audit_log(f"request:{plain.id}"))[0]["detail"] == {}


async def test_closing_refusals_change_nothing_and_are_audited(service, store_url):
    offer = await service.offer("web", ACME, "mobile", "Irkutsk")
    request_id = offer.request.id
    await service.close_request("web", request_id, "done")
    before = await table(store_url, "SELECT * FROM requests ORDER BY id")
    error = await refused("request_closed", service.close_request("cli:bob", request_id, "x"))
    assert "already closed" in error.message and "web" in error.message
    await refused("unknown_request", service.close_request("cli:bob", 999, "x"))
    assert await table(store_url, "SELECT * FROM requests ORDER BY id") == before
    log = await service.audit_log(f"request:{request_id}")
    assert [(e["action"], e["outcome"], e["actor"], e["account"]) for e in log] == [
        ("close_request", "request_closed", "cli:bob", ACME),
        ("close_request", "ok", "web", ACME),
    ]
    assert log[0]["detail"]["note"] == "x" and log[0]["detail"]["message"]
    [unknown] = await service.audit_log("request:999")
    assert (unknown["action"], unknown["outcome"], unknown["account"]) == (
        "close_request", "unknown_request", None)


@pytest.mark.parametrize("request_id, note", [
    ("abc", None), ("", None), ("-1", None), ("0", None), (0, None), ("1.0", None), (1.5, None),
    (True, None), (None, None), ("\u0661", None), ("9" * 30, None), (2**63, None),
    ("1", "x" * 501), ("1", 5), ("1", ["x"]), ("1", "line\nbreak"), ("1", "a\x00b"),
])
async def test_bad_ids_and_notes_are_refused_before_anything(service, request_id, note):
    offer = await service.offer("web", ACME, "mobile", "Irkutsk")
    assert offer.request.id == 1
    entries = len(await service.audit_log())
    await refused("bad_input", service.close_request("web", request_id, note))
    assert await service.requests() == [offer.request]
    assert len(await service.audit_log()) == entries  # malformed: not an attempt on a request
    closed = await service.close_request("web", "1", "x" * 500)  # the longest note is fine
    assert len(closed.note) == 500


# bindings, rules, disable, enable


async def test_bind_and_rule_on_an_own_reserved_number(service):
    await service.reserve("web", ACME, MOSCOW_1)
    number = await service.bind("web", MOSCOW_1, "acme-line", as_account=ACME)
    assert number.inbound_campaign == "acme-line"
    number = await service.set_rule("web", MOSCOW_1, "force_no", as_account=ACME)
    assert number.callback_rule is CallbackRule.FORCE_NO
    routing = (await published(service))[MOSCOW_1]
    assert (routing.inbound_campaign, routing.callback_rule) == ("acme-line", "force_no")
    assert (await service.bind("web", MOSCOW_1, None)).inbound_campaign is None


@pytest.mark.parametrize("case, code", [
    ("another_accounts_number", "not_owner"),
    ("another_accounts_campaign", "not_owner"),
    ("a_service_number", "service_number"),
    ("a_disabled_number", "number_disabled"),
    ("an_unreserved_number", "not_reserved"),
    ("an_outbound_campaign", "not_inbound"),
    ("an_unknown_campaign", "unknown_campaign"),
])
async def test_binding_refusals_change_nothing_and_are_audited(service, store_url, case, code):
    await service.reserve("web", ACME, MOSCOW_1)
    await service.reserve("web", OLDCO, MOSCOW_2)
    await service.disable("web", MOSCOW_2)
    did, campaign, as_account = {
        "another_accounts_number": (MOSCOW_2, "oldco-line", ACME),
        "another_accounts_campaign": (MOSCOW_1, "oldco-line", None),
        "a_service_number": (POOL_1, "acme-line", None),
        "a_disabled_number": (MOSCOW_2, "oldco-line", OLDCO),
        "an_unreserved_number": (MOBILE, "acme-line", None),
        "an_outbound_campaign": (MOSCOW_1, "acme-sale", ACME),
        "an_unknown_campaign": (MOSCOW_1, "nope", ACME),
    }[case]
    before = await table(store_url, "SELECT * FROM numbers ORDER BY did")
    version = await service.data.version()
    await refused(code, service.bind("web", did, campaign, as_account=as_account))
    assert await table(store_url, "SELECT * FROM numbers ORDER BY did") == before
    assert await service.data.version() == version
    entry = (await service.audit_log(did))[0]
    assert (entry["action"], entry["outcome"], entry["actor"]) == ("change_number", code, "web")
    assert entry["detail"]["inbound_campaign"] == campaign and entry["detail"]["message"]


async def test_resending_the_binding_of_a_disabled_number_changes_only_the_rule(service):
    await service.reserve("web", ACME, MOSCOW_1)
    await service.bind("web", MOSCOW_1, "acme-line")
    await service.disable("web", MOSCOW_1)
    number = await service.change_number("web", MOSCOW_1, inbound_campaign="acme-line",
                                         callback_rule="force_no", as_account=ACME)
    assert (number.inbound_campaign, number.callback_rule) == ("acme-line", "force_no")
    await service.create_campaign("web", "acme-line-2", ACME, "inbound")
    await refused("number_disabled", service.bind("web", MOSCOW_1, "acme-line-2"))
    assert (await service.bind("web", MOSCOW_1, None)).inbound_campaign is None


async def test_rules_exist_only_for_reserved_numbers(service):
    await refused("service_number", service.set_rule("web", POOL_1, "force_yes"))
    await refused("not_reserved", service.set_rule("web", MOBILE, "force_yes"))
    await service.reserve("web", ACME, MOSCOW_1)
    await refused("not_owner", service.set_rule("web", MOSCOW_1, "force_yes", as_account=OLDCO))
    await refused("bad_input", service.set_rule("web", MOSCOW_1, "sometimes"))


async def test_disable_keeps_bindings_and_enable_restores_them(service):
    await service.reserve("web", ACME, MOSCOW_1)
    await service.bind("web", MOSCOW_1, "acme-line")
    disabled = await service.disable("web", MOSCOW_1, as_account=ACME)
    assert (disabled.status, disabled.inbound_campaign) == ("disabled", "acme-line")
    assert (await published(service))[MOSCOW_1].status is NumberStatus.DISABLED
    enabled = await service.enable("web", MOSCOW_1)
    assert (enabled.status, enabled.inbound_campaign) == ("active", "acme-line")
    assert (await published(service))[MOSCOW_1].status is NumberStatus.ACTIVE
    await refused("not_owner", service.disable("web", POOL_1, as_account=ACME))


# release


async def test_release_waits_for_dialing_campaigns_then_clears_everything(service):
    await service.reserve("web", ACME, MOSCOW_1)
    await service.bind("web", MOSCOW_1, "acme-line")
    await service.set_rule("web", MOSCOW_1, "force_yes")
    await service.update_campaign("web", "acme-sale", caller_id=MOSCOW_1)
    error = await refused("number_in_use", service.release("web", MOSCOW_1, as_account=ACME))
    assert "acme-sale" in error.message
    await service.update_campaign("web", "acme-sale", state="finished")
    released = await service.release("web", MOSCOW_1, as_account=ACME)
    assert (released.owner, released.inbound_campaign, released.callback_rule) == (
        None, None, "as_campaign")
    assert (await service.campaign("acme-sale")).caller_id is None
    routing = (await published(service))[MOSCOW_1]
    assert (routing.owner, routing.inbound_campaign) == (None, None)
    assert MOSCOW_1 in [n.did for n in (await service.offer("web", OLDCO, "landline",
                                                            "Moscow")).numbers]
    await refused("not_reserved", service.release("web", MOSCOW_1))
    await refused("service_number", service.release("web", POOL_1))


# campaigns and their caller ID


async def test_caller_id_choices(service):
    await service.reserve("web", ACME, MOSCOW_1)
    await service.reserve("web", OLDCO, MOSCOW_2)
    ok = await service.create_campaign("web", "acme-2", ACME, "outbound",
                                       caller_id="8 495 111 00 01")
    assert ok.caller_id == MOSCOW_1
    pool = await service.create_campaign("web", "acme-3", ACME, "outbound", caller_id="pool")
    assert pool.caller_id is None
    await refused("not_owner", service.create_campaign("web", "x1", ACME, "outbound",
                                                       caller_id=MOSCOW_2))
    await refused("service_number", service.create_campaign("web", "x2", ACME, "outbound",
                                                            caller_id=POOL_1))
    await refused("not_verified", service.update_campaign("web", "newbie-promo",
                                                          caller_id=MOSCOW_1))
    await refused("bad_input", service.create_campaign("web", "x3", ACME, "inbound",
                                                       caller_id=MOSCOW_1))
    await refused("unknown_number", service.create_campaign("web", "x4", ACME, "outbound",
                                                            caller_id="74990000000"))
    await service.disable("web", MOSCOW_1)
    await refused("number_disabled", service.create_campaign("web", "x5", ACME, "outbound",
                                                             caller_id=MOSCOW_1))
    await refused("already_exists", service.create_campaign("web", "acme-2", ACME, "inbound"))
    await refused("bad_input", service.create_campaign("web", "bad id!", ACME, "inbound"))
    assert (await service.data.load()).campaigns["acme-2"].caller_id == MOSCOW_1
    assert {c.id for c in await service.campaigns(ACME)} == {
        "acme-sale", "acme-line", "acme-2", "acme-3"}


async def test_an_account_with_numbers_cannot_lose_its_verification(service):
    await service.reserve("web", ACME, MOSCOW_1)
    await refused("account_has_numbers", service.update_account("web", ACME, verified=False))
    await service.release("web", MOSCOW_1)
    assert not (await service.update_account("web", ACME, verified=False)).verified
    assert not (await service.data.load()).accounts[ACME].verified


# the numbers view


async def test_numbers_view_of_an_account(service):
    await service.reserve("web", ACME, MOSCOW_1)
    await service.reserve("web", ACME, MOBILE)
    await service.reserve("web", ACME, KAZAN)
    await service.bind("web", MOSCOW_1, "acme-line")
    await service.update_campaign("web", "acme-sale", caller_id=MOSCOW_1)
    await service.disable("web", KAZAN)
    view = await service.numbers_view(ACME)
    assert view.reserved == {"landline": {"active": 1, "disabled": 1}, "mobile": {"active": 1}}
    assert view.tabs == {"active": 4, "disabled": 1}  # two reserved, two service numbers
    rows = {row.number.did: row for row in view.rows}
    assert set(rows) == {MOSCOW_1, MOBILE, POOL_1, "78120000002"}
    assert rows[MOSCOW_1].dialing == ["acme-sale"]
    assert rows[MOSCOW_1].number.inbound_campaign == "acme-line"
    assert rows[MOSCOW_1].rule == "as_campaign"
    assert rows[POOL_1].rule is None and rows[POOL_1].dialing == []
    disabled = await service.numbers_view(ACME, "disabled")
    assert [row.number.did for row in disabled.rows] == [KAZAN]
    newbie = await service.numbers_view(NEWBIE)
    assert {row.number.did: row.dialing for row in newbie.rows}[POOL_1] == ["newbie-promo"]


async def test_search_by_any_part_of_the_digits(service):
    await service.reserve("web", ACME, MOSCOW_1)
    await service.reserve("web", ACME, MOBILE)

    async def found(query: str) -> list[str]:
        return [row.number.did for row in (await service.numbers_view(ACME, search=query)).rows]

    assert await found("1110001") == [MOSCOW_1, MOBILE]
    assert await found("903") == [MOBILE]
    assert await found("8 (903) 111-00-01") == [MOBILE]
    assert await found("+7 495") == [MOSCOW_1, POOL_1]
    assert await found("abc") == []
    assert len(await found("")) == 4
    everything = await service.numbers_view(search="0001")
    assert {row.number.did for row in everything.rows} >= {MOSCOW_1, MOBILE, KAZAN, POOL_1}


async def test_number_details(service):
    await service.reserve("web", ACME, MOSCOW_1)
    await service.update_campaign("web", "acme-sale", caller_id=MOSCOW_1)
    details = await service.number("8 495 111-00-01")
    assert details.row.dialing == ["acme-sale"]
    assert [e["action"] for e in details.history] == ["reserve", "add_number"]
    await refused("unknown_number", service.number("74990000000"))


# publishing: Redis away, sync


async def test_a_change_while_redis_is_away_is_published_later(service, settings):
    away = redis_client("redis://127.0.0.1:1", settings)
    unreachable = RoutingData(away, settings.redis.key_prefix)
    real, service.publisher.data = service.publisher.data, unreachable
    try:
        await service.reserve("web", ACME, MOSCOW_1)  # committed all the same
        assert await service.pending() == 1
        assert (await service.number(MOSCOW_1)).row.number.owner == ACME
    finally:
        await unreachable.redis.aclose()
        service.publisher.data = real
    assert (await published(service))[MOSCOW_1].owner is None
    assert await service.flush()
    assert await service.pending() == 0
    assert (await published(service))[MOSCOW_1].owner == ACME


async def test_a_sync_while_redis_is_away_is_refused_in_words(service, settings):
    away = redis_client("redis://127.0.0.1:1", settings)
    real, service.publisher.data = service.publisher.data, RoutingData(away, "zv:")
    try:
        await refused("no_redis", service.sync("cli"))
    finally:
        await away.aclose()
        service.publisher.data = real


async def test_sync_rebuilds_redis_from_the_store(service, redis, settings):
    await service.reserve("web", ACME, MOSCOW_1)
    await service.data.put_number(Number("74997777777", Pool.SERVICE))  # not in SQLite
    await redis.hdel(service.data.hashes["number"], MOSCOW_1)
    await redis.hset(service.data.hashes["account"], NEWBIE, "[1,garbled")
    report = await service.sync("cli")
    assert (report.accounts, report.numbers, report.campaigns) == (3, 6, 5)
    assert report.removed["numbers"] == 1
    snapshot = await service.data.load()
    assert snapshot.numbers[MOSCOW_1].owner == ACME
    assert snapshot.accounts[NEWBIE].name == "Newbie"
    assert "74997777777" not in snapshot.numbers
    assert set(snapshot.campaigns) == {"acme-sale", "acme-line", "oldco-sale", "oldco-line",
                                       "newbie-promo"}
