"""The admin API on a real socket: the document, the token, every seed feature, the race, and
bad input to every endpoint (a 4xx JSON error, never a 500, nothing half-written)."""

from __future__ import annotations

import asyncio
import time

import pytest
from openapi_spec_validator import validate

from web_helpers import TOKEN, admin_api, helpers
from zvonok_agi.routing import scenario as scenarios
from zvonok_agi.web.openapi import DOCUMENT

ACME, OLDCO, NEWBIE = helpers.ACME, helpers.OLDCO, helpers.NEWBIE
MOSCOW_1, MOSCOW_2, POOL_1 = helpers.MOSCOW_1, helpers.MOSCOW_2, helpers.POOL_1


@pytest.fixture
async def api(settings, store_url):
    async with admin_api(settings, store_url, max_body=4096) as (svc, server, c):
        c.service, c.server, c.db = svc, server, store_url
        yield c


async def business_tables(store_url: str) -> dict[str, list]:
    """Everything but the audit log (which records refused attempts too)."""
    return {name: await helpers.table(store_url, f"SELECT * FROM {name} ORDER BY 1")
            for name in ("accounts", "numbers", "campaigns", "requests", "outbox")}


# the document and the token


async def test_the_openapi_document_is_valid_served_and_complete(api):
    validate(DOCUMENT)
    served = await api.get("/api/openapi.json", token=None)
    assert served.status == 200 and served.body == DOCUMENT
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in api.server._runner.app.router.routes()
        if route.resource.canonical.startswith("/api/") and route.method != "HEAD"
    }
    documented = {
        (method, path) for path, item in DOCUMENT["paths"].items() for method in item
        if method != "parameters"
    }
    assert routes == documented


async def test_a_bearer_token_is_required(api):
    for token in (None, "wrong", ""):
        answer = await api.get("/api/accounts", token=token)
        assert (answer.status, answer.code) == (401, "unauthorized")
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    answer = await api.get("/api/accounts", token=None, headers={"Authorization": TOKEN})
    assert answer.status == 401
    assert (await api.get("/api/health")).body == {"ok": True, "pending": 0}


# the seed's features


async def test_reservation_flow_change_disable_enable_release(api):
    regions = await api.get("/api/regions", params={"choice": "landline_popular"})
    assert regions.body["regions"][0] == {
        "region": "Moscow", "names": {"en": "Moscow", "ru": "Москва"}, "available": 2}
    offer = await api.post(f"/api/accounts/{ACME}/offers",
                           {"choice": "landline_popular", "region": "Moscow"})
    assert [n["did"] for n in offer.body["numbers"]] == [MOSCOW_1, MOSCOW_2]
    reserved = await api.post(f"/api/accounts/{ACME}/reservations", {"did": "+7 495 111-00-01"})
    assert reserved.status == 201 and reserved.body["owner"] == ACME
    changed = await api.patch(f"/api/numbers/{MOSCOW_1}", {
        "inbound_campaign": "acme-line", "callback_rule": "force_yes"},
        params={"as_account": ACME})
    assert (changed.body["inbound_campaign"], changed.body["callback_rule"]) == (
        "acme-line", "force_yes")
    assert (await api.post(f"/api/numbers/{MOSCOW_1}/disable")).body["status"] == "disabled"
    view = await api.get("/api/numbers", params={"account": ACME, "status": "disabled"})
    assert [n["did"] for n in view.body["numbers"]] == [MOSCOW_1]
    assert view.body["reserved"] == {"landline": {"disabled": 1}}
    enabled = await api.post(f"/api/numbers/{MOSCOW_1}/enable")
    assert (enabled.body["status"], enabled.body["inbound_campaign"]) == ("active", "acme-line")
    await api.patch("/api/campaigns/acme-sale", {"caller_id": "8 495 111-00-01"})
    details = await api.get(f"/api/numbers/{MOSCOW_1}")
    assert details.body["dialing"] == ["acme-sale"]
    in_use = await api.delete(f"/api/accounts/{ACME}/reservations/{MOSCOW_1}")
    assert (in_use.status, in_use.code) == (409, "number_in_use")
    await api.patch("/api/campaigns/acme-sale", {"caller_id": None})
    released = await api.delete(f"/api/accounts/{ACME}/reservations/{MOSCOW_1}")
    assert (released.body["owner"], released.body["callback_rule"]) == (None, None)
    view = await api.get("/api/numbers", params={"account": ACME})
    assert view.body["reserved"] == {}
    assert {n["did"] for n in view.body["numbers"]} == {POOL_1, "78120000002"}
    assert all(n["callback_rule"] is None for n in view.body["numbers"])


async def test_twenty_concurrent_reservations_of_one_number(api):
    for i in range(20):
        await api.post("/api/accounts", {"id": f"racer-{i}", "verified": True})
    answers = await asyncio.gather(*(
        api.post(f"/api/accounts/racer-{i}/reservations", {"did": MOSCOW_1}) for i in range(20)
    ))
    assert sorted(a.status for a in answers) == [201] + [409] * 19
    losers = [a for a in answers if a.status == 409]
    assert {a.code for a in losers} == {"already_taken"}
    assert all("already taken" in a.body["error"]["message"] for a in losers)
    winner = next(a for a in answers if a.status == 201).body["owner"]
    assert (await api.get(f"/api/numbers/{MOSCOW_1}")).body["owner"] == winner
    unverified = await api.post(f"/api/accounts/{NEWBIE}/reservations", {"did": MOSCOW_2})
    assert (unverified.status, unverified.code) == (403, "not_verified")
    assert "not verified" in unverified.body["error"]["message"]
    audit = await api.get("/api/audit", params={"subject": MOSCOW_1, "limit": "100"})
    outcomes = [e["outcome"] for e in audit.body["entries"] if e["action"] == "reserve"]
    assert sorted(outcomes) == ["already_taken"] * 19 + ["ok"]


async def test_an_empty_region_files_a_request_and_nothing_else(api):
    before = await business_tables(api.db)
    offer = await api.post(f"/api/accounts/{ACME}/offers",
                           {"choice": "mobile", "region": "Irkutsk"})
    assert offer.status == 200 and offer.body["numbers"] == []
    assert "sales team will call you back" in offer.body["message"]
    requests = (await api.get("/api/requests")).body["requests"]
    assert [(r["account"], r["kind"], r["region"]) for r in requests] == [
        (ACME, "mobile", "Irkutsk")]
    after = await business_tables(api.db)
    assert after["requests"] != before["requests"]
    assert {k: v for k, v in after.items() if k != "requests"} == \
        {k: v for k, v in before.items() if k != "requests"}


async def test_regions_are_found_as_people_type_them(api):
    offer = await api.post(f"/api/accounts/{ACME}/offers", {"choice": "landline",
                                                            "region": "Москва"})
    assert (offer.body["region"], len(offer.body["numbers"])) == ("Moscow", 2)
    unknown = await api.post(f"/api/accounts/{ACME}/offers", {"choice": "landline",
                                                              "region": "Moskow"})
    assert (unknown.status, unknown.code) == (409, "unknown_region")
    assert unknown.body["error"]["choices"] == ["Moscow"]
    assert unknown.body["error"]["choice_names"] == [{"en": "Moscow", "ru": "Москва"}]
    ambiguous = await api.post(f"/api/accounts/{ACME}/offers", {"choice": "landline",
                                                                "region": "Altai"})
    assert (ambiguous.status, ambiguous.code) == (409, "ambiguous_region")
    assert ambiguous.body["error"]["choices"] == ["Altai Territory", "Republic of Altai"]
    assert (await api.get("/api/requests")).body["requests"] == []


async def test_sales_close_a_request(api):
    offer = await api.post(f"/api/accounts/{ACME}/offers",
                           {"choice": "mobile", "region": "Irkutsk"})
    request = offer.body["request"]
    assert request["status"] == "open" and "closed_at" not in request
    path = f"/api/requests/{request['id']}/close"
    too_long = await api.post(path, {"note": "x" * 501})
    assert (too_long.status, too_long.code) == (400, "bad_input")
    assert "500" in too_long.body["error"]["message"]
    closed = await api.post(path, {"note": "called back, wants two"})
    assert closed.status == 200
    assert {k: closed.body[k] for k in ("id", "status", "closed_by", "note")} == {
        "id": request["id"], "status": "closed", "closed_by": "api",
        "note": "called back, wants two"}
    assert closed.body["closed_at"] >= request["at"]
    assert (await api.get("/api/requests")).body["requests"] == []
    listed = await api.get("/api/requests", params={"status": "closed"})
    assert listed.body["requests"] == [closed.body]
    before = await business_tables(api.db)
    again = await api.post(path)
    assert (again.status, again.code) == (409, "request_closed")
    assert await business_tables(api.db) == before
    audit = await api.get("/api/audit", params={"subject": f"request:{request['id']}"})
    assert [(e["action"], e["outcome"], e["account"]) for e in audit.body["entries"]] == [
        ("close_request", "request_closed", ACME), ("close_request", "ok", ACME)]
    second = await api.post(f"/api/accounts/{OLDCO}/offers",
                            {"choice": "landline_popular", "region": "Kazan"})
    assert second.body["numbers"]  # Kazan has a number: no request
    second = await api.post(f"/api/accounts/{OLDCO}/offers",
                            {"choice": "landline_popular", "region": "Novosibirsk"})
    plain = await api.post(f"/api/requests/{second.body['request']['id']}/close",
                           raw=b"", headers={"Content-Type": "application/json"})
    assert (plain.status, plain.body["note"]) == (200, None)  # no body: no note
    third = await api.post(f"/api/accounts/{OLDCO}/offers", {"choice": "mobile", "region": "Omsk"})
    path = f"/api/requests/{third.body['request']['id']}/close"
    answers = await asyncio.gather(*(api.post(path, {"note": f"n{i}"}) for i in range(5)))
    assert sorted(a.status for a in answers) == [200] + [409] * 4  # closed once


@pytest.mark.parametrize("did, campaign, as_account, status, code", [
    (MOSCOW_2, "oldco-line", ACME, 403, "not_owner"),  # another account's number
    (POOL_1, "acme-line", ACME, 409, "service_number"),
    (helpers.KAZAN, "acme-line", ACME, 409, "number_disabled"),
])
async def test_refused_bindings_change_nothing_and_are_audited(
    api, did, campaign, as_account, status, code
):
    await api.post(f"/api/accounts/{ACME}/reservations", {"did": helpers.KAZAN})
    await api.post(f"/api/accounts/{OLDCO}/reservations", {"did": MOSCOW_2})
    await api.post(f"/api/numbers/{helpers.KAZAN}/disable")
    before = await business_tables(api.db)
    answer = await api.patch(f"/api/numbers/{did}", {"inbound_campaign": campaign},
                             params={"as_account": as_account})
    assert (answer.status, answer.code) == (status, code)
    assert answer.body["error"]["message"]
    assert await business_tables(api.db) == before
    [entry, *_] = (await api.get("/api/audit", params={"subject": did})).body["entries"]
    assert (entry["action"], entry["outcome"], entry["account"]) == (
        "change_number", code, as_account)


async def test_accounts_campaigns_stock_and_sync(api):
    created = await api.post("/api/accounts", {"id": "zeta", "name": "Zeta"})
    assert created.status == 201 and created.body == {"id": "zeta", "name": "Zeta",
                                                      "verified": False}
    assert (await api.patch("/api/accounts/zeta", {"verified": True})).body["verified"]
    assert (await api.get("/api/accounts/zeta")).body["name"] == "Zeta"
    assert len((await api.get("/api/accounts")).body["accounts"]) == 4
    added = await api.post("/api/numbers", {"did": "+7 383 200-00-01"})
    assert (added.status, added.body["region"], added.body["pool"]) == (
        201, "Novosibirsk", "reservable")
    campaign = await api.post("/api/campaigns", {"id": "zeta-sale", "account": "zeta",
                                                 "kind": "outbound", "accept_inbound": True})
    assert campaign.status == 201 and campaign.body["caller_id"] is None
    assert (await api.get("/api/campaigns/zeta-sale")).body["accept_inbound"]
    paused = await api.patch("/api/campaigns/zeta-sale", {"state": "paused"})
    assert paused.body["state"] == "paused"
    listed = await api.get("/api/campaigns", params={"account": "zeta"})
    assert [c["id"] for c in listed.body["campaigns"]] == ["zeta-sale"]
    synced = await api.post("/api/sync")
    assert (synced.status, synced.body["accounts"], synced.body["numbers"]) == (200, 4, 7)


# number health


async def test_number_health_is_shown_and_rests_reach_the_audit_log_once(api):
    health = api.service.health_store
    now = time.time()
    for n in range(40):
        await health.count(POOL_1, n < 4, now - 60)
    assert await health.rest(POOL_1, now + 3600, now)
    await health.log_event(POOL_1, "rested", now, rate=0.1, median=0.5, until=now + 3600)
    view = await api.get("/api/numbers")
    [row] = [r for r in view.body["numbers"] if r["did"] == POOL_1]
    assert row["health"] == {"placed": 40, "answered": 4, "rate": 0.1,
                             "rested_until": now + 3600}
    others = [r["health"] for r in view.body["numbers"] if r["did"] != POOL_1]
    assert others and all(h == {"placed": 0, "answered": 0, "rate": None, "rested_until": None}
                          for h in others)
    assert await api.service.audit_health_events() == 1
    assert await api.service.audit_health_events() == 0
    await api.service.data.redis.delete(health.events_key + ":audited")  # a copy cut short
    assert await api.service.audit_health_events() == 0
    details = await api.get(f"/api/numbers/{POOL_1}")
    assert details.body["health"]["placed"] == 40
    [entry] = [e for e in details.body["history"] if e["actor"] == "dialer"]
    assert (entry["action"], entry["outcome"], entry["detail"]["rate"]) == ("rest", "ok", "0.1")


async def test_a_campaign_made_through_the_api_routes_by_its_scenario_at_once(api):
    document = {"play": "hello", "operators": {"endpoints": ["op-1", "op-2"]},
                "no_answer": {"play": "sorry-busy"}}
    created = await api.post("/api/campaigns", {"account": ACME, "kind": "inbound",
                                                "scenario": document})
    assert created.status == 201
    shown = {"version": 1, "play": "hello",
             "operators": {"endpoints": ["op-1", "op-2"], "ring_timeout": 20},
             "no_answer": {"play": "sorry-busy"}}
    assert created.body["scenario"] == shown
    campaign_id = created.body["id"]
    # Published to the engine's routing data (the outbox's deltas): no dialplan edit
    routing = await api.service.data.load()
    assert scenarios.document(routing.campaigns[campaign_id].scenario) == shown
    # Changed: an outbound campaign's digit defaults to 1
    sale = await api.patch("/api/campaigns/acme-sale", {"scenario": {
        "play": "promo-may", "operators": {"queue": "sales", "ring_timeout": 45}}})
    assert sale.body["scenario"]["operators"] == {"digit": "1", "queue": "sales",
                                                  "ring_timeout": 45}
    [entry, *_] = (await api.get("/api/audit", params={"subject": "acme-sale"})).body["entries"]
    assert entry["detail"]["scenario"] == sale.body["scenario"]
    assert (await api.service.data.load()).campaigns["acme-sale"].scenario.operators.queue == (
        "sales")
    # Taken away: the campaign's own dialplan context again
    cleared = await api.patch("/api/campaigns/acme-sale", {"scenario": None})
    assert cleared.body["scenario"] is None
    assert (await api.service.data.load()).campaigns["acme-sale"].scenario is None


# dialing


async def test_callees_are_queued_once_and_the_progress_counts_them(api):
    callees = ["8 916 123-45-67", "+7 916 123-45-67", "79031234567", "12"]
    first = await api.post("/api/campaigns/acme-sale/callees", {"callees": callees, "cps": 2.5})
    assert first.status == 200
    assert first.body == {
        "campaign": "acme-sale", "queued": 2, "queued_before": 0,
        "refused": [{"callee": "12", "reason": "not a phone number"}],
    }
    again = await api.post("/api/campaigns/acme-sale/callees", {"callees": callees[1:3]})
    assert (again.body["queued"], again.body["queued_before"]) == (0, 2)
    progress = (await api.get("/api/campaigns/acme-sale/progress")).body
    assert progress == {
        "campaign": "acme-sale", "callees": 3, "waiting": 2, "dialing": 0, "done": 0,
        "refused": 1, "outcomes": dict.fromkeys(
            ("answered", "no_answer", "busy", "failed", "congestion"), 0),
        "dialing_by_host": {}, "cps": 2.5, "concurrency": None,
    }
    await api.patch("/api/campaigns/acme-sale", {"state": "finished"})
    finished = await api.post("/api/campaigns/acme-sale/callees", {"callees": ["79031234568"]})
    assert (finished.status, finished.code) == (409, "campaign_finished")


# bad input: every endpoint

NESTED = b"[" * 2000 + b"]" * 2000  # deeper than Python's recursion, under the cap
BAD_INPUT = [
    # (method, path, body or raw bytes, params, status, code)
    ("POST", "/api/accounts", b"not json", None, 400, "bad_json"),
    ("POST", "/api/accounts", b"\xff\xfe{", None, 400, "bad_json"),
    ("POST", "/api/accounts", NESTED, None, 400, "bad_json"),
    ("POST", "/api/accounts", b'{"id": NaN}', None, 400, "bad_json"),
    ("POST", "/api/accounts", [], None, 400, "bad_input"),
    ("POST", "/api/accounts", {}, None, 400, "bad_input"),
    ("POST", "/api/accounts", {"id": 5}, None, 400, "bad_input"),
    ("POST", "/api/accounts", {"id": "a b"}, None, 400, "bad_input"),
    ("POST", "/api/accounts", {"id": "ok", "verified": "yes"}, None, 400, "bad_input"),
    ("POST", "/api/accounts", {"id": "ok", "name": ["x"]}, None, 400, "bad_input"),
    ("POST", "/api/accounts", {"id": "ok", "admin": True}, None, 400, "bad_input"),
    ("POST", "/api/accounts", {"id": ACME}, None, 409, "already_exists"),
    ("GET", "/api/accounts/nobody", None, None, 404, "unknown_account"),
    ("PATCH", "/api/accounts/nobody", {"name": "x"}, None, 404, "unknown_account"),
    ("PATCH", f"/api/accounts/{ACME}", {"verified": 1}, None, 400, "bad_input"),
    ("PATCH", f"/api/accounts/{ACME}", {"name": "x" * 500}, None, 400, "bad_input"),
    ("PATCH", f"/api/accounts/{ACME}", {"name": "a\x00b"}, None, 400, "bad_input"),
    ("PATCH", f"/api/accounts/{ACME}", {"name": "Ac\u200bme"}, None, 400, "bad_input"),
    ("PATCH", f"/api/accounts/{ACME}", b'{"name": "a\\udc80"}', None, 400, "bad_input"),
    ("POST", "/api/accounts", b'{"id": "zeta", "name": "\\ud800"}', None, 400, "bad_input"),
    ("POST", f"/api/accounts/{ACME}/offers", {"choice": "mobile", "region": "\u202eMoscow"},
     None, 400, "bad_input"),
    ("POST", f"/api/accounts/{ACME}/offers", {"choice": "fax", "region": "Moscow"}, None,
     400, "bad_input"),
    ("POST", f"/api/accounts/{ACME}/offers", {"choice": "mobile", "region": 5}, None,
     400, "bad_input"),
    ("POST", f"/api/accounts/{ACME}/offers", {"choice": "mobile", "region": " "}, None,
     400, "bad_input"),
    ("POST", f"/api/accounts/{ACME}/offers", {"choice": "mobile"}, None, 400, "bad_input"),
    ("POST", "/api/accounts/nobody/offers", {"choice": "mobile", "region": "Moscow"}, None,
     404, "unknown_account"),
    ("POST", f"/api/accounts/{ACME}/reservations", {"did": 74951110001}, None,
     400, "bad_number"),
    ("POST", f"/api/accounts/{ACME}/reservations", {"did": "+7 (495) 111-00-0x"}, None,
     400, "bad_number"),
    ("POST", f"/api/accounts/{ACME}/reservations", {"did": "1" * 100}, None, 400, "bad_number"),
    ("POST", f"/api/accounts/{ACME}/reservations", {"did": None}, None, 400, "bad_input"),
    ("POST", "/api/campaigns", {"id": None, "account": ACME, "kind": "outbound"}, None,
     400, "bad_input"),
    ("POST", f"/api/accounts/{ACME}/requests", {"comment": "x", "contact": "+7 916 000-00-00",
                                               "region": None}, None, 400, "bad_input"),
    ("POST", f"/api/accounts/{ACME}/requests", {"comment": " ", "contact": "+7 916 000-00-00"},
     None, 400, "bad_input"),
    ("POST", f"/api/accounts/{ACME}/requests", {"comment": "x", "contact": "call me"},
     None, 400, "bad_number"),
    ("POST", f"/api/accounts/{ACME}/requests", {"comment": "x" * 501, "contact": "89160000000"},
     None, 400, "bad_input"),
    ("POST", "/api/accounts/nobody/requests", {"comment": "x", "contact": "89160000000"},
     None, 404, "unknown_account"),
    ("POST", "/api/campaigns", {"account": ACME, "kind": "outbound", "name": "a\u202eb"},
     None, 400, "bad_input"),
    ("PATCH", "/api/campaigns/acme-sale", {"name": "x" * 121}, None, 400, "bad_input"),
    ("POST", "/api/session", {"login": "anna"}, None, 400, "bad_input"),
    ("POST", "/api/session", {"login": 5, "password": "x"}, None, 400, "bad_input"),
    ("POST", f"/api/accounts/{ACME}/reservations", {"did": "74990000000"}, None,
     404, "unknown_number"),
    ("POST", "/api/accounts/nobody/reservations", {"did": MOSCOW_1}, None,
     404, "unknown_account"),
    ("GET", "/api/regions", None, None, 400, "bad_input"),
    ("GET", "/api/regions", None, {"choice": "fax"}, 400, "bad_input"),
    ("GET", "/api/regions", None, [("choice", "mobile"), ("choice", "landline")], 400,
     "bad_input"),
    ("GET", "/api/numbers", None, {"status": "weird"}, 400, "bad_input"),
    ("GET", "/api/numbers", None, {"account": "nobody"}, 404, "unknown_account"),
    ("GET", "/api/numbers", None, {"search": "1" * 41}, 400, "bad_input"),
    ("POST", "/api/numbers", {"did": "abc"}, None, 400, "bad_number"),
    ("POST", "/api/numbers", {"did": MOSCOW_1}, None, 409, "already_exists"),
    ("POST", "/api/numbers", {"did": "+7 800 555-35-35"}, None, 409, "unsupported_number"),
    ("POST", "/api/numbers", {"did": "+44 20 7946 0958", "kind": "landline"}, None,
     409, "unsupported_number"),
    ("POST", "/api/numbers", {"did": "74959999999", "pool": "gold"}, None, 400, "bad_input"),
    ("POST", "/api/numbers", {"did": "74959999999", "kind": 5}, None, 400, "bad_input"),
    ("POST", "/api/numbers", {"did": "74959999999", "region": "x" * 81}, None,
     400, "bad_input"),
    ("POST", "/api/numbers", {"did": "74959999999", "status": True}, None, 400, "bad_input"),
    ("GET", "/api/numbers/abc", None, None, 400, "bad_number"),
    ("GET", "/api/numbers/" + "7" * 300, None, None, 400, "bad_number"),
    ("GET", "/api/numbers/74990000000", None, None, 404, "unknown_number"),
    ("PATCH", f"/api/numbers/{MOSCOW_1}", {"callback_rule": "sometimes"}, None,
     400, "bad_input"),
    ("PATCH", f"/api/numbers/{MOSCOW_1}", {"callback_rule": None}, None, 400, "bad_input"),
    ("PATCH", f"/api/numbers/{MOSCOW_1}", {"inbound_campaign": 5}, None, 400, "bad_input"),
    ("PATCH", f"/api/numbers/{MOSCOW_1}", {"inbound_campaign": "acme-line",
                                           "callback_rule": "bad"}, None, 400, "bad_input"),
    ("PATCH", f"/api/numbers/{MOSCOW_1}", {"owner": "oldco"}, None, 400, "bad_input"),
    ("PATCH", "/api/numbers/74990000000", {"callback_rule": "force_no"}, None,
     404, "unknown_number"),
    ("PATCH", "/api/numbers/abc", {"callback_rule": "force_no"}, None, 400, "bad_number"),
    ("DELETE", f"/api/accounts/{ACME}/reservations/abc", None, None, 400, "bad_number"),
    ("DELETE", f"/api/accounts/{ACME}/reservations/74990000000", None, None,
     404, "unknown_number"),
    ("DELETE", f"/api/accounts/{OLDCO}/reservations/{MOSCOW_1}", None, None, 403, "not_owner"),
    ("DELETE", f"/api/accounts/a%20b/reservations/{MOSCOW_1}", None, None, 400, "bad_input"),
    ("DELETE", f"/api/numbers/{MOSCOW_1}", None, None, 405, "method_not_allowed"),
    ("POST", "/api/numbers/abc/disable", None, None, 400, "bad_number"),
    ("POST", "/api/numbers/74990000000/enable", None, None, 404, "unknown_number"),
    ("POST", f"/api/numbers/{MOSCOW_1}/disable", None, {"as_account": OLDCO}, 403,
     "not_owner"),
    ("POST", "/api/campaigns", {"id": "c", "account": ACME, "kind": "sideways"}, None,
     400, "bad_input"),
    ("POST", "/api/campaigns", {"id": "c", "account": "nobody", "kind": "inbound"}, None,
     404, "unknown_account"),
    ("POST", "/api/campaigns", {"id": "c", "account": ACME, "kind": "outbound",
                                "caller_id": 123}, None, 400, "bad_number"),
    ("POST", "/api/campaigns", {"id": "c", "account": ACME, "kind": "outbound",
                                "accept_inbound": "yes"}, None, 400, "bad_input"),
    ("POST", "/api/campaigns", {"id": "c", "account": ACME, "kind": "outbound",
                                "state": 5}, None, 400, "bad_input"),
    ("POST", "/api/campaigns", {"id": "c", "account": ACME, "kind": "outbound",
                                "caller_id": MOSCOW_2}, None, 403, "not_owner"),
    ("POST", "/api/campaigns", {"id": "c", "account": ACME}, None, 400, "bad_input"),
    ("GET", "/api/campaigns/nope", None, None, 404, "unknown_campaign"),
    ("PATCH", "/api/campaigns/nope", {"state": "paused"}, None, 404, "unknown_campaign"),
    ("PATCH", "/api/campaigns/acme-sale", {"state": "done"}, None, 400, "bad_input"),
    ("PATCH", "/api/campaigns/acme-sale", {"caller_id": "abc"}, None, 400, "bad_number"),
    ("PATCH", "/api/campaigns/acme-sale", {"accept_inbound": None}, None, 400, "bad_input"),
    ("PATCH", "/api/campaigns/acme-line", {"accept_inbound": True}, None, 409, "not_outbound"),
    ("PATCH", "/api/campaigns/acme-line", {"caller_id": MOSCOW_1}, None, 409, "not_outbound"),
    ("PATCH", "/api/campaigns/acme-line", {"scenario": {"play": "a..b"}}, None, 400,
     "bad_scenario"),
    ("PATCH", "/api/campaigns/acme-sale", {"scenario": {"operators": {"queue": "q"}}},
     None, 400, "bad_scenario"),
    ("POST", "/api/campaigns", {"id": "c", "account": ACME, "kind": "inbound",
                                "caller_id": MOSCOW_1}, None, 400, "bad_input"),
    ("POST", "/api/campaigns/acme-sale/callees", {}, None, 400, "bad_input"),
    ("POST", "/api/campaigns/acme-sale/callees", {"callees": []}, None, 400, "bad_input"),
    ("POST", "/api/campaigns/acme-sale/callees", {"callees": "79161234567"}, None, 400,
     "bad_input"),
    ("POST", "/api/campaigns/acme-sale/callees", {"callees": [5]}, None, 400, "bad_input"),
    ("POST", "/api/campaigns/acme-sale/callees", {"callees": ["7" * 41]}, None, 400,
     "bad_input"),
    ("POST", "/api/campaigns/acme-sale/callees", {"callees": [MOSCOW_1], "cps": 0}, None, 400,
     "bad_input"),
    ("POST", "/api/campaigns/acme-sale/callees", {"callees": [MOSCOW_1], "cps": True}, None, 400,
     "bad_input"),
    ("POST", "/api/campaigns/acme-sale/callees", {"callees": [MOSCOW_1], "concurrency": 1.5},
     None, 400, "bad_input"),
    ("POST", "/api/campaigns/acme-sale/callees", {"callees": [MOSCOW_1], "concurrency": True},
     None, 400, "bad_input"),
    ("POST", "/api/campaigns/acme-sale/callees", {"callees": [MOSCOW_1], "when": 1}, None, 400,
     "bad_input"),
    ("POST", "/api/campaigns/acme-line/callees", {"callees": [MOSCOW_1]}, None, 409,
     "not_outbound"),
    ("POST", "/api/campaigns/nope/callees", {"callees": [MOSCOW_1]}, None, 404,
     "unknown_campaign"),
    ("GET", "/api/campaigns/nope/progress", None, None, 404, "unknown_campaign"),
    ("GET", "/api/requests", None, {"status": "weird"}, 400, "bad_input"),
    ("POST", "/api/requests/1/close", None, None, 404, "unknown_request"),
    ("POST", "/api/requests/1/close", {"note": "x"}, None, 404, "unknown_request"),
    ("POST", "/api/requests/abc/close", None, None, 400, "bad_input"),
    ("POST", "/api/requests/0/close", None, None, 400, "bad_input"),
    ("POST", "/api/requests/-1/close", None, None, 400, "bad_input"),
    ("POST", "/api/requests/1.0/close", None, None, 400, "bad_input"),
    ("POST", "/api/requests/%D9%A1/close", None, None, 400, "bad_input"),
    ("POST", "/api/requests/" + "9" * 300 + "/close", None, None, 400, "bad_input"),
    ("POST", "/api/requests/1/close", b"not json", None, 400, "bad_json"),
    ("POST", "/api/requests/1/close", b"null", None, 400, "bad_input"),
    ("POST", "/api/requests/1/close", [], None, 400, "bad_input"),
    ("POST", "/api/requests/1/close", {"note": 5}, None, 400, "bad_input"),
    ("POST", "/api/requests/1/close", {"note": "x" * 501}, None, 400, "bad_input"),
    ("POST", "/api/requests/1/close", {"note": "a\x00b"}, None, 400, "bad_input"),
    ("POST", "/api/requests/1/close", {"status": "open"}, None, 400, "bad_input"),
    ("GET", "/api/requests/1/close", None, None, 405, "method_not_allowed"),
    ("GET", "/api/audit", None, {"limit": "abc"}, 400, "bad_input"),
    ("GET", "/api/audit", None, {"limit": "0"}, 400, "bad_input"),
    ("GET", "/api/audit", None, {"limit": "5000"}, 400, "bad_input"),
    # left empty is not left out (Schemathesis: the document calls these invalid)
    ("GET", "/api/audit", None, {"limit": ""}, 400, "bad_input"),
    ("GET", "/api/audit", None, {"limit": "\u0661"}, 400, "bad_input"),
    ("GET", "/api/audit", None, {"subject": "x" * 201}, 400, "bad_input"),
    ("GET", "/api/requests", None, {"status": ""}, 400, "bad_input"),
    ("GET", "/api/numbers", None, {"status": ""}, 400, "bad_input"),
    ("GET", "/api/numbers", None, {"account": ""}, 400, "bad_input"),
    ("GET", "/api/campaigns", None, {"account": ""}, 400, "bad_input"),
    ("POST", f"/api/numbers/{MOSCOW_1}/disable", None, {"as_account": ""}, 400, "bad_input"),
    ("GET", "/api/numbers/0", None, None, 400, "bad_number"),
    ("GET", "/api/nothing-here", None, None, 404, "not_found"),
    ("PUT", "/api/accounts", {"id": "x"}, None, 405, "method_not_allowed"),
]


# A scenario's fields, each refused with the field named (docs/routing.md, "Scenarios").
BAD_SCENARIOS = [
    ("outbound", {"play": "../../etc/passwd"}),
    ("outbound", {"play": "sounds/promo"}),
    ("outbound", {"play": "promo.wav"}),
    ("outbound", {"play": "Promo"}),
    ("outbound", {"play": ""}),
    ("outbound", {"play": "promo", "volume": 11}),
    ("outbound", {"play": "promo", "operators": {"queue": "sales", "colour": "red"}}),
    ("outbound", {"operators": {"queue": "sales"}}),
    ("outbound", {"play": "promo", "operators": {"endpoints": ["op 1"]}}),
    ("outbound", {"play": "promo", "operators": {"endpoints": ["op-1,10,U(x)"]}}),
    ("outbound", {"play": "promo", "operators": {"endpoints": ["PJSIP/op-1"]}}),
    ("outbound", {"play": "promo", "operators": {"endpoints": ["op-1", "op-1"]}}),
    ("outbound", {"play": "promo", "operators": {"endpoints": [f"op-{i}" for i in range(9)]}}),
    ("outbound", {"play": "promo", "operators": {"endpoints": []}}),
    ("outbound", {"play": "promo", "operators": {"queue": "sales,,,,1"}}),
    ("outbound", {"play": "promo", "operators": {"queue": "sales", "endpoints": ["op-1"]}}),
    ("outbound", {"play": "promo", "operators": {}}),
    ("outbound", {"play": "promo", "operators": {"queue": "sales", "ring_timeout": 4}}),
    ("outbound", {"play": "promo", "operators": {"queue": "sales", "ring_timeout": 301}}),
    ("outbound", {"play": "promo", "operators": {"queue": "sales", "ring_timeout": "20"}}),
    ("outbound", {"play": "promo", "operators": {"queue": "sales", "ring_timeout": 20.5}}),
    ("outbound", {"play": "promo", "operators": {"queue": "sales", "digit": "12"}}),
    ("outbound", {"play": "promo", "operators": {"queue": "sales", "digit": 1}}),
    ("outbound", {"play": "promo", "no_answer": {"play": "sorry"}}),
    ("outbound", {"play": "promo", "version": 2}),
    ("outbound", ["play", "promo"]),
    ("outbound", {}),
    ("inbound", {"operators": {"queue": "sales", "digit": "1"}}),
]
BAD_INPUT += [
    ("POST", "/api/campaigns", {"id": "c", "account": ACME, "kind": kind, "scenario": document},
     None, 400, "bad_scenario")
    for kind, document in BAD_SCENARIOS
]


@pytest.mark.parametrize("method, path, body, params, status, code", BAD_INPUT,
                         ids=[f"{m} {p[:40]} {c}" for m, p, _, _, _, c in BAD_INPUT])
async def test_bad_input_is_a_json_4xx_and_writes_nothing(
    api, method, path, body, params, status, code
):
    await api.post(f"/api/accounts/{ACME}/reservations", {"did": MOSCOW_1})
    before = await business_tables(api.db)
    version = await api.service.data.version()
    raw = body if isinstance(body, bytes) else None
    answer = await api.call(method, path, None if raw else body, raw=raw, params=params)
    assert (answer.status, answer.code) == (status, code), answer.body
    assert answer.body["error"]["message"]
    assert await business_tables(api.db) == before
    assert await api.service.data.version() == version


@pytest.mark.parametrize("method, path", [
    (method, path.replace("{account}", ACME).replace("{did}", MOSCOW_1)
     .replace("{campaign}", "acme-sale").replace("{request}", "1"))
    for path, item in DOCUMENT["paths"].items() for method in item
    if method in ("post", "patch")
])
async def test_an_oversized_body_is_refused_on_every_post_and_patch(api, method, path):
    before = await business_tables(api.db)
    big = b'{"name": "' + b"x" * 5000 + b'"}'
    answer = await api.call(method.upper(), path, raw=big)
    assert (answer.status, answer.code) == (413, "body_too_large")
    assert await business_tables(api.db) == before


async def test_an_oversized_body_without_a_length_is_refused_too(api):
    async def chunks():
        for _ in range(10):
            yield b"x" * 1000

    async with api.session.post(api.base + "/api/accounts", data=chunks(),
                                headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "body_too_large"
    assert (await api.get("/api/accounts/x")).code == "unknown_account"
