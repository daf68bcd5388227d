"""Signing in to the admin API on a real socket: the cookie, CSRF and Origin, what ends a
session, the limit on failed sign-ins, what customers and staff may reach, and the audit log
naming the person."""

from __future__ import annotations

from http.cookies import SimpleCookie

import pytest
from yarl import URL

from web_helpers import PASSWORD, TOKEN, admin_api, helpers
from zvonok_agi.web.auth import COOKIE

ACME, OLDCO, MOSCOW_1 = helpers.ACME, helpers.OLDCO, helpers.MOSCOW_1


@pytest.fixture
async def api(settings, store_url):
    async with admin_api(settings, store_url) as (service, server, client):
        client.service = service
        await service.reserve("setup", ACME, MOSCOW_1)
        yield client


def cookie_of(answer) -> SimpleCookie:
    jar = SimpleCookie()
    jar.load(answer.headers["Set-Cookie"])
    return jar


async def test_sign_in_sets_a_safe_cookie_and_says_who(api):
    answer = await api.post("/api/session", {"login": "Anna", "password": PASSWORD}, token=None)
    assert answer.status == 200
    assert answer.body == {
        "login": "anna",
        "name": "Anna",
        "role": "customer",
        "account": {"id": ACME, "name": "Acme", "verified": True},
        "csrf": answer.body["csrf"],
    }
    morsel = cookie_of(answer)[COOKIE]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert not morsel["secure"]  # plain http on loopback; `admin.https` makes it Secure
    assert int(morsel["max-age"]) == 7 * 86400
    anna = await api.signed_in("anna")
    me = await anna.get("/api/me")
    assert (me.body["login"], me.body["account"]["id"], me.body["csrf"]) == (
        "anna",
        ACME,
        anna.csrf,
    )
    staff = await api.get("/api/me")  # the operator's token
    assert staff.body == {"login": None, "name": "", "role": "staff", "account": None, "csrf": None}


async def test_a_wrong_password_and_an_unknown_login_are_one_refusal(api):
    for login, password in (("anna", "not the password"), ("nobody", PASSWORD)):
        answer = await api.post("/api/session", {"login": login, "password": password}, token=None)
        assert (answer.status, answer.code) == (401, "bad_credentials")
        assert answer.body["error"]["message"] == "wrong login or password"
        assert "Set-Cookie" not in answer.headers


async def test_failed_sign_ins_make_the_next_wait(api):
    for _ in range(5):
        answer = await api.post("/api/session", {"login": "oleg", "password": "guess"}, token=None)
        assert answer.code == "bad_credentials"
    answer = await api.post("/api/session", {"login": "oleg", "password": PASSWORD}, token=None)
    assert (answer.status, answer.code) == (429, "too_many_attempts")
    assert 0 < int(answer.headers["Retry-After"]) <= 900
    assert await api.signed_in("anna")  # somebody else from the same address


async def test_a_change_with_the_cookie_needs_the_csrf_token_and_this_site(api):
    anna = await api.signed_in("anna")
    path, body = f"/api/numbers/{MOSCOW_1}", {"callback_rule": "force_no"}
    for headers, code in (
        ({"X-CSRF-Token": ""}, "bad_csrf"),
        ({"X-CSRF-Token": "forged"}, "bad_csrf"),
        ({"Origin": "http://evil.example"}, "bad_origin"),
        ({"Origin": "null"}, "bad_origin"),
        ({"Sec-Fetch-Site": "cross-site"}, "bad_origin"),
        ({"Sec-Fetch-Site": "same-site"}, "bad_origin"),
    ):
        answer = await anna.patch(path, body, headers=headers)
        assert (answer.status, answer.code) == (403, code), headers
    number = (await api.service.number(MOSCOW_1)).row.number
    assert number.callback_rule == "as_campaign"
    assert (await anna.get(f"/api/numbers/{MOSCOW_1}")).status == 200  # reading needs none
    same_site = {"Origin": api.base, "Sec-Fetch-Site": "same-origin"}
    answer = await anna.patch(path, body, headers=same_site)
    assert (answer.status, answer.body["callback_rule"]) == (200, "force_no")


async def test_signing_in_from_another_site_is_refused(api):
    answer = await api.post(
        "/api/session",
        {"login": "anna", "password": PASSWORD},
        token=None,
        headers={"Origin": "http://evil.example"},
    )
    assert (answer.status, answer.code) == (403, "bad_origin")


async def test_sign_out_and_a_password_change_end_sessions(api):
    anna = await api.signed_in("anna")
    other = await api.signed_in("anna")
    out = await anna.delete("/api/session")
    assert out.status == 200 and cookie_of(out)[COOKIE].value == ""
    assert (await anna.get("/api/me")).status == 401
    assert (await other.get("/api/me")).status == 200
    wrong = await other.post("/api/me/password", {"current": "nope", "new": "a new secret"})
    assert (wrong.status, wrong.code) == (403, "wrong_password")
    stale = other.session.cookie_jar.filter_cookies(URL(api.base))[COOKIE].value
    changed = await other.post("/api/me/password", {"current": PASSWORD, "new": "a new secret"})
    assert changed.status == 200
    other.csrf = changed.body["csrf"]
    assert (await other.get("/api/me")).status == 200  # the new cookie
    replayed = await api.get("/api/me", token=None, headers={"Cookie": f"{COOKIE}={stale}"})
    assert replayed.status == 401
    refused = await api.post("/api/session", {"login": "anna", "password": PASSWORD}, token=None)
    assert refused.code == "bad_credentials"
    assert await api.signed_in("anna", "a new secret")
    token_user = await api.post("/api/me/password", {"current": "x", "new": "a new secret"})
    assert (token_user.status, token_user.code) == (403, "forbidden")


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", "/api/accounts", None),
        ("POST", "/api/accounts", {"id": "zeta"}),
        ("PATCH", f"/api/accounts/{ACME}", {"verified": False}),
        ("POST", "/api/numbers", {"did": "+7 495 999-99-99"}),
        ("POST", "/api/requests/1/close", None),
        ("GET", "/api/audit", None),
        ("POST", "/api/sync", None),
        ("GET", "/api/health", None),
    ],
)
async def test_staff_operations_are_refused_to_customers(api, method, path, body):
    anna = await api.signed_in("anna")
    answer = await anna.call(method, path, body)
    assert (answer.status, answer.code) == (403, "forbidden")
    sam = await api.signed_in("sam")  # a staff user
    assert (await sam.call(method, path, body)).status not in (401, 403)


async def test_the_audit_log_names_the_person(api):
    anna = await api.signed_in("anna")
    await anna.patch(f"/api/numbers/{MOSCOW_1}", {"callback_rule": "force_yes"})
    sam = await api.signed_in("sam")
    await sam.post(f"/api/numbers/{MOSCOW_1}/disable")
    await api.post(f"/api/numbers/{MOSCOW_1}/enable")
    log = (await api.get("/api/audit", params={"subject": MOSCOW_1})).body["entries"]
    assert [(e["actor"], e["action"], e["account"]) for e in log[:3]] == [
        ("api", "enable", ACME),
        ("staff:sam", "disable", ACME),
        ("customer:anna", "change_number", ACME),
    ]


async def test_without_credentials_only_the_document_and_signing_in(api):
    assert (await api.get("/api/openapi.json", token=None)).status == 200
    for path in ("/api/me", "/api/numbers", "/api/regions?choice=mobile"):
        answer = await api.get(path, token=None)
        assert (answer.status, answer.code) == (401, "unauthorized")
    wrong_token = await api.get("/api/me", token="wrong")
    assert wrong_token.status == 401
    assert (await api.get("/api/me", token=TOKEN)).status == 200
