"""Changes made through the admin API reach a running engine, with no restart: the next
inbound call, placed the way Asterisk places it, takes the new route."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine_helpers import call, running_engine
from web_helpers import admin_api, helpers
from zvonok_agi.app import redis_client
from zvonok_agi.routing.model import Attempt, Outcome
from zvonok_agi.store.history import CallbackHistory

ACME, OLDCO, MOSCOW_1 = helpers.ACME, helpers.OLDCO, helpers.MOSCOW_1
CONTACT = "79161234567"  # a subscriber acme's campaign dialed


@pytest.fixture
async def api(settings, store_url):
    async with admin_api(settings, store_url) as (service, server, client):
        client.service = service
        yield client


async def dialed(settings, campaign: str, account: str, did: str, callee: str) -> None:
    """An outbound attempt an hour ago that nobody answered, as the dialer records it."""
    history = CallbackHistory(redis_client(settings.redis.url, settings),
                              settings.redis.key_prefix, settings.routing.callback_window)
    now = time.time()
    try:
        await history.record(Attempt(f"a-{campaign}", campaign, account, did, callee,
                                     now - 3600, Outcome.NO_ANSWER), now)
    finally:
        await history.redis.aclose()


async def followed(engine, check) -> None:
    """Waits (at most 2 s) until the engine's copy of the routing data passes `check`."""
    for _ in range(200):
        if check(engine.cache.snapshot):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the engine did not follow the change")


async def test_a_callback_rule_changed_through_the_api_routes_the_next_call(api, settings):
    await api.post(f"/api/accounts/{ACME}/reservations", {"did": MOSCOW_1})
    await api.patch(f"/api/numbers/{MOSCOW_1}", {"inbound_campaign": "acme-line"})
    await api.patch("/api/campaigns/acme-sale", {"accept_inbound": False,
                                                 "caller_id": MOSCOW_1})
    await dialed(settings, "acme-sale", ACME, MOSCOW_1, CONTACT)
    async with running_engine(settings) as engine:
        before = await call(engine, MOSCOW_1, CONTACT)
        assert (before["ZV_ROUTE"], before["ZV_CAMPAIGN"]) == ("inbound", "acme-line")
        changed = await api.patch(f"/api/numbers/{MOSCOW_1}", {"callback_rule": "force_yes"},
                                  params={"as_account": ACME})
        assert changed.status == 200
        await followed(engine, lambda s: s.numbers[MOSCOW_1].callback_rule == "force_yes")
        after = await call(engine, MOSCOW_1, CONTACT)
        assert (after["ZV_ROUTE"], after["ZV_CAMPAIGN"]) == ("outbound", "acme-sale")
        await api.patch(f"/api/numbers/{MOSCOW_1}", {"callback_rule": "force_no"})
        await api.post(f"/api/numbers/{MOSCOW_1}/disable")
        await followed(engine, lambda s: s.numbers[MOSCOW_1].status == "disabled")
        off = await call(engine, MOSCOW_1, CONTACT)
        assert (off["ZV_ROUTE"], off["ZV_FALLBACK"]) == ("fallback", "unknown_number")
        await api.post(f"/api/numbers/{MOSCOW_1}/enable")
        await followed(engine, lambda s: s.numbers[MOSCOW_1].status == "active")
        back = await call(engine, MOSCOW_1, CONTACT)
        assert (back["ZV_ROUTE"], back["ZV_CAMPAIGN"]) == ("inbound", "acme-line")


async def test_after_release_and_a_new_owner_old_contacts_never_reach_old_campaigns(
    api, settings
):
    await api.post(f"/api/accounts/{ACME}/reservations", {"did": MOSCOW_1})
    await api.patch(f"/api/numbers/{MOSCOW_1}", {"inbound_campaign": "acme-line",
                                                 "callback_rule": "force_yes"})
    await api.patch("/api/campaigns/acme-sale", {"caller_id": MOSCOW_1})
    await dialed(settings, "acme-sale", ACME, MOSCOW_1, CONTACT)
    async with running_engine(settings) as engine:
        # acme's campaign moves to the pool, acme deletes the number, oldco reserves it
        await api.patch("/api/campaigns/acme-sale", {"caller_id": None})
        released = await api.delete(f"/api/accounts/{ACME}/reservations/{MOSCOW_1}")
        assert released.status == 200
        await followed(engine, lambda s: s.numbers[MOSCOW_1].owner is None)
        gap = await call(engine, MOSCOW_1, CONTACT)
        assert (gap["ZV_ROUTE"], gap["ZV_FALLBACK"]) == ("fallback", "unknown_number")
        taken = await api.post(f"/api/accounts/{OLDCO}/reservations", {"did": MOSCOW_1})
        assert taken.status == 201
        new_rule = await api.patch(f"/api/numbers/{MOSCOW_1}", {
            "inbound_campaign": "oldco-line", "callback_rule": "force_yes"},
            params={"as_account": OLDCO})
        assert new_rule.status == 200
        await followed(engine, lambda s: s.numbers[MOSCOW_1].inbound_campaign == "oldco-line")
        for _ in range(3):  # acme's unanswered attempt would have claimed the first one
            routed = await call(engine, MOSCOW_1, CONTACT)
            assert (routed["ZV_ROUTE"], routed["ZV_CAMPAIGN"]) == ("inbound", "oldco-line")
        stranger = await call(engine, MOSCOW_1, "79035550000")
        assert stranger["ZV_CAMPAIGN"] == "oldco-line"
