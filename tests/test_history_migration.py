"""A callback history written in the layout before hash tags (by a running older version) is
merged into today's keys: callbacks are recognised and claims are not lost, twice is harmless,
and --finish removes the old keys."""

from __future__ import annotations

import json
import time

import redis as sync_redis

from engine_helpers import CALLER, RESERVED, base_inventory, call, running_engine
from zvonok_agi import cli
from zvonok_agi.routing.model import Outcome
from zvonok_agi.store.history import CallbackHistory
from zvonok_agi.store.history_migration import migrate_history

WEEK = 7 * 86400


def write_old_attempt(client, prefix: str, attempt_id: str, *, callbacks: int = 0) -> None:
    """What the old RECORD/DIAL scripts wrote for one attempt from RESERVED to CALLER."""
    hist = f"{prefix}hist:{RESERVED}:{CALLER}"
    record = {"campaign": "spring-sale", "account": "acme", "at": time.time() - 3600}
    client.hset(
        hist,
        mapping={
            attempt_id: json.dumps(record),
            f"{attempt_id}:o": "no_answer",
            f"{attempt_id}:c": callbacks,
        },
    )
    client.expire(hist, WEEK)
    client.set(f"{prefix}attempt:{attempt_id}", hist, ex=WEEK)
    client.set(f"{prefix}last:{CALLER}", RESERVED, ex=WEEK)


async def test_an_old_history_routes_its_callback_after_the_migration(settings, redis):
    prefix = settings.redis.key_prefix
    with sync_redis.Redis.from_url(settings.redis.url) as old:
        write_old_attempt(old, prefix, "old1")
    history = CallbackHistory(redis, prefix)
    report = await migrate_history(redis, history, finish=False)
    assert (report.pairs, report.attempts, report.last_numbers) == (1, 1, 1)
    assert await redis.get(history.last_key(CALLER)) == RESERVED.encode()
    assert 0 < await redis.ttl(history.key(RESERVED, CALLER)) <= WEEK
    async with running_engine(settings, base_inventory()) as engine:
        first = await call(engine, RESERVED, CALLER)
        second = await call(engine, RESERVED, CALLER)
    assert (first["ZV_ROUTE"], first["ZV_ATTEMPT"]) == ("outbound", "old1")
    assert second["ZV_ROUTE"] == "inbound"


async def test_merging_again_keeps_the_newer_state_and_takes_claims_made_meanwhile(settings, redis):
    prefix = settings.redis.key_prefix
    history = CallbackHistory(redis, prefix)
    with sync_redis.Redis.from_url(settings.redis.url) as old:
        write_old_attempt(old, prefix, "old1")
        write_old_attempt(old, prefix, "old2")
        await migrate_history(redis, history, finish=False)
        # The new engines settle old1; meanwhile an old engine routed a callback to old2.
        [old1] = [a for a in await history.attempts(RESERVED, CALLER) if a.id == "old1"]
        assert await history.settle(old1, Outcome.BUSY)
        old.hset(f"{prefix}hist:{RESERVED}:{CALLER}", "old2:c", 1)

    report = await migrate_history(redis, history, finish=True)

    assert report.attempts == 0  # both were copied the first time
    kept = {a.id: a for a in await history.attempts(RESERVED, CALLER)}
    assert kept["old1"].outcome is Outcome.BUSY  # not put back to no_answer
    assert kept["old2"].callbacks == 1  # the claim made on the old key counts
    assert await redis.keys(f"{prefix}hist:7*") == []
    assert await redis.keys(f"{prefix}attempt:*") == []
    assert await redis.keys(f"{prefix}last:7*") == []
    assert await redis.get(history.last_key(CALLER)) == RESERVED.encode()


def test_the_command_reports_what_it_merged(settings, monkeypatch, capsys):
    with sync_redis.Redis.from_url(settings.redis.url) as old:
        write_old_attempt(old, settings.redis.key_prefix, "a")
    monkeypatch.setenv("ZVONOK_REDIS_URL", settings.redis.url)
    monkeypatch.setenv("ZVONOK_REDIS_KEY_PREFIX", settings.redis.key_prefix)
    # In this process: the logging of later tests must not go to this test's captured output.
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)
    assert cli.main(["migrate-history"]) == 0
    assert cli.main(["migrate-history", "--finish"]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first == (
        "merged 1 (DID, callee) histories (1 attempts copied), 1 last numbers shown; old keys kept"
    )
    assert second.endswith("; 3 old keys deleted")
