"""A control plane on a real store (a SQLite file, or a PostgreSQL schema: `store_url`) and the
session's real Redis, and a small world in it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import fields, replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from zvonok_agi.app import redis_client
from zvonok_agi.config import Settings
from zvonok_agi.numbers.databases import connect
from zvonok_agi.numbers.migrations import MIGRATIONS, statements
from zvonok_agi.numbers.rules import Refused
from zvonok_agi.numbers.service import DEFAULT_POPULAR_CITIES, NumbersService
from zvonok_agi.numbers.store import Store
from zvonok_agi.store.routing_data import RoutingData

ACME, OLDCO, NEWBIE = "acme", "oldco", "newbie"
MOSCOW_1, MOSCOW_2 = "74951110001", "74951110002"  # reservable Moscow landlines
KAZAN = "78432000001"  # reservable, region overridden to "Kazan"
MOBILE = "79031110001"  # reservable mobile
POOL_1, POOL_2 = "74950000001", "78120000002"  # service pool


@contextlib.asynccontextmanager
async def control_plane(settings: Settings, target: str | Path) -> AsyncIterator[NumbersService]:
    client = redis_client(settings.redis.url, settings)
    store = await Store.open(target)
    try:
        yield NumbersService(store, RoutingData(client, settings.redis.key_prefix))
    finally:
        await store.close()
        await client.aclose()


async def table(target: str | Path, sql: str) -> list[tuple]:
    """The rows of a query, straight from the store (what the service does not show)."""
    async with await Store.open(target) as store, store.reading() as q:
        return [tuple(row) for row in await q.db.fetch(sql)]


async def released(target: str | Path, version: int, *changes: str) -> None:
    """A store as the release at schema `version` left it: its migrations, then `changes`."""
    database = await connect(target)
    try:
        async with database.writing() as db:
            await database.schema_version(db)
            for migration in MIGRATIONS[:version]:
                for statement in statements(migration, database.name):
                    await db.run(statement)
            await database.set_schema_version(db, version)
            for sql in changes:
                await db.run(sql)
    finally:
        await database.close()


async def small_world(service: NumbersService) -> None:
    """acme (verified), oldco (verified), newbie (not); stock in Moscow, Kazan and a mobile;
    two service numbers; a campaign of each kind for acme and oldco, a pool one for newbie."""
    for account, verified in ((ACME, True), (OLDCO, True), (NEWBIE, False)):
        await service.create_account("test", account, account.title(), verified)
    for did in (MOSCOW_1, MOSCOW_2, MOBILE):
        await service.add_number("test", did)
    await service.add_number("test", KAZAN, region="Kazan")
    for did in (POOL_1, POOL_2):
        await service.add_number("test", did, "service")
    for account in (ACME, OLDCO):
        await service.create_campaign("test", f"{account}-sale", account, "outbound",
                                      accept_inbound=True)
        await service.create_campaign("test", f"{account}-line", account, "inbound")
    await service.create_campaign("test", "newbie-promo", NEWBIE, "outbound")


def with_admin(settings: Settings, **admin: object):
    """Settings with an `[admin]` section (a stand-in while config.py has none)."""
    if hasattr(settings, "admin"):
        return replace(settings, admin=replace(settings.admin, **admin))
    defaults = dict(host="127.0.0.1", port=0, token="", db_path="var/zvonok.db",
                    popular_cities=DEFAULT_POPULAR_CITIES, max_body=65536,
                    max_open_requests=5)
    sections = {f.name: getattr(settings, f.name) for f in fields(settings)}
    return SimpleNamespace(**sections, admin=SimpleNamespace(**{**defaults, **admin}))


async def refused(code: str, call) -> Refused:
    """The refusal `call` ends in, which must have this code."""
    with pytest.raises(Refused) as info:
        await call
    assert info.value.code == code, info.value.message
    return info.value
