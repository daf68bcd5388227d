"""A change that waits past the busy timeout for the store's write lock, held by another
connection (a real SQLite file locked by a second connection; on PostgreSQL, the writers'
advisory lock held by another session): 503 `store_busy` with Retry-After, nothing changed,
and the same change goes through once the lock is free. The CLI says so and exits 1."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest

from store_lock import BUSY_MS, write_lock_held
from web_helpers import CHEAP, PASSWORD, admin_api, helpers
from zvonok_agi import cli
from zvonok_agi.access.users import Users
from zvonok_agi.numbers import databases
from zvonok_agi.web.app import RETRY_BUSY
from zvonok_agi.web.openapi import DOCUMENT


@pytest.fixture
def short_busy_timeout(monkeypatch):
    monkeypatch.setattr(databases, "BUSY_TIMEOUT_MS", BUSY_MS)


async def test_a_change_the_lock_holds_up_is_503_store_busy_and_changes_nothing(
    settings, store_url, short_busy_timeout
):
    async with admin_api(settings, store_url) as (service, _, api):
        new = {"id": "late", "name": "Late", "verified": True}
        async with write_lock_held(store_url):
            answer = await api.post("/api/accounts", new)
            assert (answer.status, answer.code) == (503, "store_busy")
            assert answer.headers["Retry-After"] == str(RETRY_BUSY)
            assert answer.body["error"]["message"] == (
                "the store is busy: other changes held it for 0.2 s; nothing was changed, try again"
            )
            assert (await api.get("/api/accounts/late")).status == 404  # reads go on
        assert (await api.post("/api/accounts", new)).status == 201


def test_every_operation_but_the_document_lists_503():
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if method != "parameters" and path != "/api/openapi.json":
                assert "503" in operation["responses"], (method, path)


def test_the_cli_says_the_store_is_busy_and_exits_1(
    settings, tmp_path, short_busy_timeout, monkeypatch, capsys
):
    url = f"sqlite:///{tmp_path / 'numbers.db'}"
    config = tmp_path / "zvonok.toml"
    config.write_text(f'[store]\nurl = "{url}"\n[redis]\nurl = "{settings.redis.url}"\n')
    assert cli.main(["-c", str(config), "accounts", "add", "first"]) == 0
    other = sqlite3.connect(databases.sqlite_path(url), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        capsys.readouterr()
        assert cli.main(["-c", str(config), "accounts", "add", "second"]) == 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    error = capsys.readouterr().err
    assert f"the store {url} is busy: other changes held it for 0.2 s" in error
    assert "nothing was changed, try again" in error
    assert cli.main(["-c", str(config), "accounts", "add", "second"]) == 0


@pytest.fixture
def plane(settings, store_url):
    return replace(settings, store=replace(settings.store, url=store_url))


async def test_a_user_command_on_a_busy_store_is_the_commands_error(
    plane, store_url, short_busy_timeout
):
    async with helpers.control_plane(plane, store_url) as service:
        await helpers.small_world(service)
        await Users(service.store, hasher=CHEAP).add("test", "ann", PASSWORD, account="acme")
    args = cli._parser().parse_args(["users", "remove", "ann"])
    async with write_lock_held(store_url):
        with pytest.raises(cli.CommandError, match="is busy: other changes held it"):
            await args.run(plane, args)
