"""`zvonok-agi store copy`: a whole store into another, on real SQLite files and the session's
real PostgreSQL server; the copy equals the original row by row, Redis stays equal to it, a
target with data is refused, a copy killed midway leaves its target empty, and a store kept
busy by another connection is said to be busy."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pytest
from argon2 import PasswordHasher, profiles
from test_numbers_commands import parser

from conftest import new_schema
from numbers_helpers import ACME, KAZAN, MOSCOW_1, MOSCOW_2, control_plane, small_world, table
from store_lock import BUSY_MS, write_lock_held
from zvonok_agi import cli
from zvonok_agi.access.users import Users
from zvonok_agi.numbers import databases
from zvonok_agi.numbers.copying import TABLES, TargetNotEmpty, copy_store
from zvonok_agi.numbers.migrations import MIGRATIONS
from zvonok_agi.numbers.store import Store, StoreError

CHEAP = PasswordHasher.from_parameters(profiles.CHEAPEST)
KILLER = Path(__file__).with_name("copy_killer.py")
ROOT = Path(__file__).resolve().parents[2]


async def world(settings, url: str) -> None:
    """The small world, and of everything the store keeps some: a reservation bound to a
    campaign with a scenario, a rule, requests open and closed, users with a session and a
    failed sign-in, the audit log, and outbox rows not yet published."""
    async with control_plane(settings, url) as service:
        await small_world(service)
        await service.reserve("test", ACME, MOSCOW_1)
        await service.reserve("test", ACME, KAZAN)
        await service.update_campaign("test", f"{ACME}-line", scenario={"play": "summer"})
        await service.bind("test", MOSCOW_1, f"{ACME}-line")
        await service.set_rule("test", KAZAN, "force_no")
        await service.offer("test", ACME, "landline_popular", "Novosibirsk")
        request = await service.offer("test", ACME, "mobile", "Tver")
        await service.close_request("test", request.request.id, "called back")
        await service.support_request("test", ACME, "none of these suits", "79031234567")
        users = Users(service.store, hasher=CHEAP)
        await users.add("test", "ann", "correct horse", account=ACME, name="Ann")
        await users.add("test", "boss", "battery staple")
        await users.sign_in("ann", "correct horse", "192.0.2.1")
        with pytest.raises(Exception, match="wrong login or password"):
            await users.sign_in("boss", "wrong", "192.0.2.2")
        async with service.store.transaction() as q:  # a change whose publishing is pending
            await q.touch("number", MOSCOW_2)


async def dump(url: str) -> dict[str, list[tuple]]:
    """Every row of every table, in key order, and the schema's version."""
    rows = {
        name: await table(url, f"SELECT * FROM {name} ORDER BY {order}")
        for name, order in TABLES.items()
    }
    async with await Store.open(url) as store, store.reading() as q:
        rows["version"] = [(await store.database.schema_version(q.db),)]
    return rows


@pytest.fixture
async def postgres_store(postgres_url):
    async with new_schema(postgres_url) as url:
        yield url


async def test_the_copy_knows_every_table_of_the_schema(store_url):
    async with await Store.open(store_url) as store, store.reading() as q:
        if store.database.name == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        else:
            sql = (
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_name <> 'schema_version'"
            )
        assert {row[0] for row in await q.db.fetch(sql)} == set(TABLES)


async def test_sqlite_to_postgresql_and_back_equals_the_original(
    settings, tmp_path, postgres_store, redis
):
    original = f"sqlite:///{tmp_path / 'original.db'}"
    await world(settings, original)
    before = await dump(original)
    assert all(before[name] for name in TABLES), "the world holds rows of every table"

    copied = await copy_store(original, postgres_store, batch=3)  # several batches per table
    assert copied == {name: len(before[name]) for name in TABLES}
    assert await dump(postgres_store) == before
    back = tmp_path / "back.db"
    await copy_store(postgres_store, back)
    assert await dump(str(back)) == before
    assert before["version"] == [(len(MIGRATIONS),)]

    # Redis, filled from the original, equals the copy: the publisher sends what the copied
    # outbox names, and a rebuild finds nothing to change.
    prefix = settings.redis.key_prefix
    async with control_plane(settings, postgres_store) as service:
        await service.flush()
        hashes = {
            key: await redis.hgetall(key)
            for key in await redis.keys(f"{prefix}*")
            if await redis.type(key) == b"hash"
        }
        report = await service.sync("test")
        assert set(report.removed.values()) == {0}
        assert hashes == {key: await redis.hgetall(key) for key in hashes}
        # The keys the database makes go on after the copied ones.
        made = await service.support_request("test", ACME, "and one more", "79031234567")
        assert made.id == max(row[0] for row in before["requests"]) + 1
        assert await service.pending() == 0


async def test_a_target_with_data_is_refused_unless_forced(settings, tmp_path, postgres_store):
    source = str(tmp_path / "source.db")
    await world(settings, source)
    async with control_plane(settings, postgres_store) as service:
        await service.create_account("test", "other", "Other", True)
    held = await dump(postgres_store)

    with pytest.raises(TargetNotEmpty, match=r"already holds data \(1 accounts, 1 audit\)"):
        await copy_store(source, postgres_store)
    assert await dump(postgres_store) == held

    args = parser().parse_args(["store", "copy", "--to", postgres_store])
    with pytest.raises(cli.CommandError, match="give --force to replace what it holds"):
        await args.run(settings_for(settings, source), args)

    args = parser().parse_args(["store", "copy", "--to", postgres_store, "--force"])
    assert await args.run(settings_for(settings, source), args) == 0
    assert await dump(postgres_store) == await dump(source)


def settings_for(settings, url: str):
    return replace(settings, store=replace(settings.store, url=url))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_a_copy_killed_midway_leaves_an_empty_target_the_next_run_fills(
    kind, settings, tmp_path, request
):
    source = str(tmp_path / "source.db")
    await world(settings, source)
    if kind == "sqlite":
        target = str(tmp_path / "target.db")
        await _killed_midway(source, target)
        await _filled_after(source, target)
    else:
        async with new_schema(request.getfixturevalue("postgres_url")) as target:
            await _killed_midway(source, target)
            await _filled_after(source, target)


async def _killed_midway(source: str, target: str) -> None:
    """A copy that kills itself (SIGKILL) once it has written the first batch of numbers."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(KILLER),
        source,
        target,
        "numbers",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert await process.wait() == -signal.SIGKILL


async def _filled_after(source: str, target: str) -> None:
    left = await dump(target)
    assert all(left[name] == [] for name in TABLES)  # nothing of the killed copy is seen
    await copy_store(source, target)  # no --force needed: the target is empty
    assert await dump(target) == await dump(source)


async def test_the_sources_writers_wait_while_it_is_copied(settings, tmp_path):
    source = tmp_path / "source.db"
    await world(settings, str(source))
    refused = []

    def write_to_the_source(table: str, copied: int) -> None:
        other = sqlite3.connect(source, timeout=0.05, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # as any writer of the store begins
        except sqlite3.OperationalError as exc:
            refused.append((table, str(exc)))
        else:
            other.execute("ROLLBACK")
        finally:
            other.close()

    await copy_store(source, tmp_path / "target.db", progress=write_to_the_source)
    assert refused and {error for _, error in refused} == {"database is locked"}
    assert {table for table, _ in refused} == set(TABLES)
    write_to_the_source("after", 0)
    assert ("after", "database is locked") not in refused


@pytest.mark.parametrize("busy", ["source", "target"])
async def test_a_store_busy_past_its_timeout_is_said_busy_and_nothing_is_copied(
    busy, settings, tmp_path, postgres_store, monkeypatch, capsys
):
    monkeypatch.setattr(databases, "BUSY_TIMEOUT_MS", BUSY_MS)
    source = f"sqlite:///{tmp_path / 'source.db'}"
    await world(settings, source)
    config = tmp_path / "zvonok.toml"
    config.write_text(f'[store]\nurl = "{source}"\n')
    command = ["-c", str(config), "store", "copy", "--to", postgres_store]
    locked = source if busy == "source" else postgres_store
    capsys.readouterr()
    async with write_lock_held(locked):
        assert await asyncio.to_thread(cli.main, command) == 1  # as every busy command
    assert capsys.readouterr().err.strip() == (
        f"zvonok-agi: copying {source} to {postgres_store}: the store {locked} is busy: other "
        f"changes held it for 0.2 s; nothing was changed, try again ({_busy_error(locked)})"
    )
    assert await asyncio.to_thread(cli.main, command) == 0  # no --force: nothing was copied
    assert await dump(postgres_store) == await dump(source)


def _busy_error(store: str) -> str:
    return (
        "database is locked"
        if store.startswith("sqlite:")
        else "canceling statement due to lock timeout"
    )


async def test_a_sqlite_file_reached_by_another_path_is_not_copied_onto_itself(
    settings, tmp_path, monkeypatch
):
    source = tmp_path / "source.db"
    await world(settings, str(source))
    held = await dump(str(source))
    (tmp_path / "link.db").symlink_to(source)
    os.link(source, tmp_path / "hard.db")  # another name of the same inode
    monkeypatch.chdir(tmp_path)
    for other in (
        "link.db",
        "hard.db",
        f"sqlite:///{tmp_path}/../{tmp_path.name}/source.db",
        "source.db",
    ):
        refused = f"^{re.escape(other)} is the store being copied: it reaches the same database"
        with pytest.raises(StoreError, match=refused):
            await copy_store(source, other, force=True)
    assert await dump(str(source)) == held


async def test_a_postgresql_schema_under_another_url_is_not_copied_onto_itself(
    settings, postgres_store, tmp_path
):
    await world(settings, postgres_store)
    held = await dump(postgres_store)
    other = _another_url(postgres_store)
    assert other != postgres_store
    with pytest.raises(StoreError, match="is the store being copied: it reaches the same"):
        await copy_store(postgres_store, other, force=True)
    assert await dump(postgres_store) == held

    # Another schema of the same database is another store.
    async with new_schema(postgres_store.partition("?")[0]) as elsewhere:
        await copy_store(other, elsewhere)
        assert await dump(elsewhere) == held


def _another_url(url: str) -> str:
    """The same server, database and schema named otherwise: a password (the test server
    trusts every local connection), the host's name for its address, the parameters in
    another order, one more of them."""
    parts = urlsplit(url)
    host = "localhost" if parts.hostname == "127.0.0.1" else parts.hostname
    params = [*parse_qsl(parts.query), ("application_name", "other")]
    query = "&".join(f"{name}={value}" for name, value in reversed(params))
    netloc = f"{parts.username}:not-needed@{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
