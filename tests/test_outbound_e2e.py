"""Outbound then inbound, end to end: the fake AMI peer replaying Asterisk, the real FastAGI
engine, real Redis. A callee who missed a campaign's call calls back the number it showed."""

from __future__ import annotations

import asyncio
import json
import sys

from dialer_helpers import command_env
from engine_helpers import RESERVED, base_inventory, call, load, running_engine
from fake_ami import FakeAMI
from zvonok_agi.ami.client import AMIClient
from zvonok_agi.outbound.originator import Originator
from zvonok_agi.routing.model import Outcome
from zvonok_agi.store.history import CallbackHistory

MISSES, ANSWERS = "79001112233", "79004445566"


def inventory() -> dict:
    inv = base_inventory(accept_inbound=True)
    for campaign in inv["campaigns"]:
        if campaign["id"] == "spring-sale":
            campaign["caller_id"] = RESERVED
    return inv


async def test_missed_call_then_callbacks_and_answered_call(settings):
    cases = {MISSES: "noanswer", ANSWERS: "answered"}
    async with (
        running_engine(settings, inventory()) as engine,
        FakeAMI(cases=cases) as fake,
        AMIClient("127.0.0.1", fake.port, "lab", "labsecret") as ami,
    ):
        history = CallbackHistory(engine.redis, settings.redis.key_prefix)
        snapshot = engine.cache.snapshot
        async with Originator(ami, history, lambda: snapshot, settings.outbound) as dialer:
            missed = await dialer.dial("spring-sale", MISSES)
            answered = await dialer.dial("spring-sale", ANSWERS)
        assert (missed.outcome, answered.outcome) == (Outcome.NO_ANSWER, Outcome.ANSWERED)
        assert missed.caller_id.did == RESERVED

        first = await call(engine, missed.caller_id.did, MISSES)
        second = await call(engine, missed.caller_id.did, MISSES)
        after_answer = await call(engine, answered.caller_id.did, ANSWERS)

    assert (first["ZV_ROUTE"], first["ZV_CAMPAIGN"]) == ("outbound", "spring-sale")
    assert first["ZV_ATTEMPT"] == missed.attempt.id
    assert (second["ZV_ROUTE"], second["ZV_CAMPAIGN"]) == ("inbound", "support")
    assert (after_answer["ZV_ROUTE"], after_answer["ZV_CAMPAIGN"]) == ("inbound", "support")
    assert len(fake.originates) == 2


async def run_dial(env: dict[str, str], campaign: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "zvonok_agi", "dial", "--campaign", campaign,
        "--to", "8 900 111-22-33", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_dial_command_prints_the_caller_id_and_outcome(settings):
    await load(settings, inventory())
    env = command_env(settings)
    async with FakeAMI(cases={MISSES: "busy"}) as fake:
        env["ZVONOK_AMI_PORT"] = str(fake.port)
        code, out, err = await run_dial(env, "pool-promo")
    assert code == 0, err
    assert "callee     79001112233" in out
    assert "caller ID  74950000001 (service pool" in out
    assert "outcome    busy" in out
    assert len(fake.originates) == 1


async def test_dial_command_says_why_no_call_was_placed(settings):
    inv = inventory()
    for campaign in inv["campaigns"]:
        if campaign["id"] == "pool-promo":
            campaign["state"] = "paused"
    await load(settings, inv)
    env = command_env(settings)
    async with FakeAMI() as fake:
        env["ZVONOK_AMI_PORT"] = str(fake.port)
        code, _, err = await run_dial(env, "pool-promo")
        assert code == 1
        assert err.splitlines()[-1] == "zvonok-agi: no call placed: campaign pool-promo is paused"
        fake.originate_not_permitted = True
        code, _, err = await run_dial(env, "spring-sale")
    assert code == 1
    refused = "zvonok-agi: no call placed: Originate refused: Permission denied"
    assert err.splitlines()[-1] == refused


async def run_command(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "zvonok_agi", *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_campaign_run_dials_a_list_once_and_a_second_run_dials_nobody(settings, tmp_path):
    await load(settings, inventory())
    listing = tmp_path / "may.csv"
    listing.write_text("phone\n79001112233\n8 900 444-55-66\n+7 900 111-22-33\nnobody\n")
    env = command_env(settings)
    async with FakeAMI(cases={MISSES: "noanswer", ANSWERS: "answered"}) as fake:
        env["ZVONOK_AMI_PORT"] = str(fake.port)
        run = ("campaign", "run", "spring-sale", "--list", str(listing), "--cps", "50")
        code, out, err = await run_command(env, *run)
        assert code == 0, err
        assert "campaign spring-sale: 3 callees in the list" in out
        assert "placed         2" in out and "refused        1" in out
        assert "nobody: not a phone number" in out
        code, out, err = await run_command(env, *run)
        assert code == 0, err
        assert "queued         0  (2 queued before)" in out and "placed         0" in out
    assert len(fake.originates) == 2


async def test_campaign_enqueue_then_status_from_any_host(settings, tmp_path):
    await load(settings, inventory())
    listing = tmp_path / "june.csv"
    listing.write_text("79001112233\n79004445566\n12\n")
    env = command_env(settings)
    code, out, err = await run_command(
        env, "campaign", "enqueue", "spring-sale", "--list", str(listing), "--concurrency", "3"
    )
    assert code == 0, err
    assert out.strip() == (
        "queued 2 callees for spring-sale; 0 were queued before; 1 are not phone numbers "
        "(refused)"
    )
    code, out, err = await run_command(env, "campaign", "status", "spring-sale", "--json")
    assert code == 0, err
    progress = json.loads(out)
    assert (progress["callees"], progress["waiting"], progress["refused"]) == (3, 2, 1)
    assert progress["concurrency"] == 3
    code, out, _ = await run_command(env, "campaign", "status", "spring-sale")
    assert "waiting    2" in out
    code, _, err = await run_command(
        env, "campaign", "enqueue", "no-such", "--list", str(listing)
    )
    assert code == 1 and "no campaign 'no-such'" in err
