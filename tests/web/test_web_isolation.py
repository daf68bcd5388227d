"""A customer reaches only their own account, through every operation of the API.

The walk is made from the OpenAPI document, so an operation added later is walked too, and
fails here until it is given what to send: customer B (oleg, of oldco) calls every operation
naming customer A's (acme's) account, number, campaign and request. Each answer must be a
refusal (403, 404), but for the caller's own (`user`: who am I, the regions, signing out),
which must name nothing of A's; afterwards A's data is as it was."""

from __future__ import annotations

import json

import pytest

from web_helpers import admin_api, helpers
from zvonok_agi.web.openapi import DOCUMENT

ACME, MOSCOW_1, MOSCOW_2 = helpers.ACME, helpers.MOSCOW_1, helpers.MOSCOW_2

# What B sends, by the body's schema: valid bodies, naming A's things where there is one.
BODIES = {
    "SignIn": None,  # public: whoever signs in gets their own session (test_web_auth)
    "PasswordChange": {"current": "not oleg's password", "new": "a new password"},
    "NewAccount": {"id": "zeta"},
    "AccountChange": {"verified": False, "name": "Taken over"},
    "OfferRequest": {"choice": "landline", "region": "Moscow"},
    "Reservation": {"did": MOSCOW_2},
    "SupportRequest": {"comment": "on acme's behalf", "contact": "+7 916 000-00-00"},
    "NewNumber": {"did": "+7 495 999-99-99"},
    "NumberChange": {"inbound_campaign": None, "callback_rule": "force_no"},
    "NewCampaign": {"account": ACME, "kind": "outbound", "caller_id": MOSCOW_1},
    "CampaignChange": {"state": "paused", "caller_id": None, "name": "Taken over"},
    "RequestClosing": {"note": "closed by someone else"},
    "CalleeList": {"callees": ["+7 916 000-00-01"], "cps": 50},
}
QUERY = {
    "account": ACME,
    "as_account": ACME,
    "choice": "landline",
    "status": "active",
    "search": MOSCOW_1[-4:],
    "subject": MOSCOW_1,
    "limit": "100",
}
# Operations on the caller's own session only: walked last (signing out ends B's session).
LAST = [("post", "/api/me/password"), ("delete", "/api/session")]


def operations() -> list[tuple[str, str, dict]]:
    found = [
        (method, path, op)
        for path, item in DOCUMENT["paths"].items()
        for method, op in item.items()
        if method != "parameters"
    ]
    return [o for o in found if o[:2] not in LAST] + [
        o for key in LAST for o in found if o[:2] == key
    ]


async def tables(store_url: str) -> dict[str, list]:
    return {
        t: await helpers.table(store_url, f"SELECT * FROM {t} ORDER BY 1")
        for t in ("accounts", "numbers", "campaigns", "requests", "users")
    }


def mentions_a(body: object, a_request: int) -> bool:
    """Whether an answer names anything of A's: its account, its numbers, its campaigns, its
    request. (Service numbers are shared: not A's.)"""
    text = json.dumps(body)
    return (
        ACME in text or MOSCOW_1 in text or any(r.get("id") == a_request for r in _requests(body))
    )


def _requests(body: object) -> list[dict]:
    return body.get("requests", []) if isinstance(body, dict) else []


@pytest.fixture
async def world(settings, store_url):
    db = store_url
    async with admin_api(settings, db) as (service, server, api):
        await service.reserve("setup", ACME, MOSCOW_1)
        await service.change_number("setup", MOSCOW_1, inbound_campaign="acme-line")
        await service.update_campaign("setup", "acme-sale", caller_id=MOSCOW_1)
        offer = await service.offer("setup", ACME, "mobile", "Omsk")
        await service.reserve("setup", helpers.OLDCO, MOSCOW_2)  # B has one too
        yield service, api, db, offer.request.id


async def test_customer_b_reaches_nothing_of_customer_a_through_any_operation(world):
    service, api, db, a_request = world
    b = await api.signed_in("oleg")
    values = {
        "{account}": ACME,
        "{did}": MOSCOW_1,
        "{campaign}": "acme-sale",
        "{request}": str(a_request),
    }
    before, version = await tables(db), await service.data.version()
    walked = []
    for method, template, op in operations():
        if op["x-access"] == "public":
            continue
        path = template
        for name, value in values.items():
            path = path.replace(name, value)
        params = {
            p["name"]: QUERY[p["name"]]
            for p in DOCUMENT["paths"][template].get("parameters", []) + op.get("parameters", [])
            if p["in"] == "query"
        }
        body = None
        if "requestBody" in op:
            schema = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            body = BODIES[schema.rsplit("/", 1)[1]]  # a new body schema: add it above
        answer = await b.call(method.upper(), path, body, params=params)
        walked.append((method, template, answer.status))
        if op["x-access"] == "user":  # the caller's own: regions, me, sign out, password
            assert answer.status in (200, 403), (method, path, answer.body)
            assert not mentions_a(answer.body, a_request), (method, path, answer.body)
        else:
            assert answer.status in (403, 404), (method, path, answer.body)
    assert len(walked) == sum(1 for *_, op in operations() if op["x-access"] != "public")
    after = await tables(db)
    assert after == before, "customer B changed something"
    assert await service.data.version() == version


@pytest.mark.parametrize(
    "method, template",
    [(m, p) for m, p, op in operations() if m == "get" and op["x-access"] != "public"],
)
async def test_customer_bs_own_lists_hold_nothing_of_as(world, method, template):
    """Without naming A at all: what B's own views, lists and details hold."""
    service, api, db, a_request = world
    b = await api.signed_in("oleg")
    path = (
        template.replace("{account}", helpers.OLDCO)
        .replace("{did}", helpers.POOL_1)
        .replace("{campaign}", "oldco-sale")
    )
    params = (
        {"status": "all"}
        if template == "/api/requests"
        else ({"choice": "landline_popular"} if template == "/api/regions" else None)
    )
    answer = await b.get(path, params=params)
    assert answer.status in (200, 403), answer.body
    assert not mentions_a(answer.body, a_request), answer.body
