"""The ops commands, parsed by the `zvonok-agi` parser and run on a real store and Redis."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from conftest import free_port
from numbers_helpers import ACME, MOSCOW_1, NEWBIE, POOL_1, control_plane, small_world, with_admin
from zvonok_agi import cli
from zvonok_agi.access.users import Users
from zvonok_agi.numbers.commands import register
from zvonok_agi.numbers.store import Store
from zvonok_agi.store.number_health import NumberHealthStore


def parser() -> argparse.ArgumentParser:
    """The CLI's parser with the control plane's commands, as cli.py builds it."""
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "numbers" not in commands.choices:
        register(commands)
    return parser


@pytest.fixture
async def ops(plane_settings, store_url, capsys):
    settings = plane_settings
    async with control_plane(settings, store_url) as service:
        await small_world(service)

    async def run(*argv: str) -> tuple[int, str]:
        """Exit code and output (stdout, or the error main() would print)."""
        capsys.readouterr()
        args = parser().parse_args(list(argv))
        try:
            code = await args.run(settings, args)
        except cli.CommandError as exc:
            return 1, str(exc)
        return code, capsys.readouterr().out

    return run


async def test_the_reservation_flow_from_the_command_line(ops):
    code, out = await ops("numbers", "regions", "landline_popular")
    assert code == 0 and re.search(r"Moscow +2\n", out) and re.search(r"St Petersburg +0", out)
    code, out = await ops("numbers", "offer", ACME, "landline", "Moscow")
    assert "2 landline numbers available in Moscow" in out and MOSCOW_1 in out
    code, out = await ops("numbers", "reserve", ACME, "+7 495 111-00-01")
    assert (code, out.strip()) == (0, f"{MOSCOW_1} is reserved by {ACME}")
    code, out = await ops("numbers", "offer", ACME, "landline_popular", "Novosibirsk")
    assert "request #1 is filed" in out
    code, out = await ops("requests", "list")
    assert "Novosibirsk" in out and ACME in out
    code, out = await ops("numbers", "reserve", NEWBIE, "74951110002")
    assert code == 1 and out.startswith("not_verified: account newbie is not verified")


async def test_sales_close_a_request_from_the_command_line(ops):
    await ops("numbers", "offer", ACME, "landline_popular", "Novosibirsk")
    code, out = await ops("requests", "close", "1", "--note", "called back")
    assert (code, out.strip()) == (
        0, f"request #1 ({ACME}, landline in Novosibirsk) is closed: called back")
    code, out = await ops("requests", "list")
    assert "Novosibirsk" not in out and "(none)" in out
    code, out = await ops("requests", "list", "--all")
    assert re.search(r"Novosibirsk +closed +cli\S* +called back\n", out)
    code, out = await ops("requests", "list", "--all", "--json")
    [closed] = json.loads(out)
    assert (closed["status"], closed["note"]) == ("closed", "called back")
    assert closed["closed_by"].startswith("cli")
    code, out = await ops("requests", "close", "1")
    assert code == 1 and out.startswith("request_closed: request #1 is already closed")
    code, out = await ops("requests", "close", "7")
    assert code == 1 and out.startswith("unknown_request:")
    code, out = await ops("requests", "close", "first")
    assert code == 1 and out.startswith("bad_input:")
    code, out = await ops("requests", "close", "1", "--note", "x" * 501)
    assert code == 1 and out.startswith("bad_input: note must be text of at most 500")
    code, out = await ops("audit", "--subject", "request:1")
    assert out.count("close_request") == 2 and "request_closed" in out


async def test_bind_rule_disable_enable_release(ops):
    await ops("numbers", "reserve", ACME, MOSCOW_1)
    assert (await ops("numbers", "bind", MOSCOW_1, "acme-line", "--as", ACME))[0] == 0
    assert "force_no" in (await ops("numbers", "rule", MOSCOW_1, "force_no"))[1]
    code, out = await ops("numbers", "bind", POOL_1, "acme-line")
    assert code == 1 and out.startswith("service_number:")
    assert "disabled" in (await ops("numbers", "disable", MOSCOW_1))[1]
    code, out = await ops("numbers", "list", "--account", ACME, "--disabled", "--json")
    [row] = json.loads(out)["numbers"]
    assert (row["did"], row["inbound_campaign"], row["callback_rule"]) == (
        MOSCOW_1, "acme-line", "force_no")
    assert "active" in (await ops("numbers", "enable", MOSCOW_1))[1]
    code, out = await ops("numbers", "release", MOSCOW_1)  # no terminal to confirm on
    assert code == 1 and "--yes" in out
    assert (await ops("numbers", "release", MOSCOW_1, "--yes"))[0] == 0
    code, out = await ops("numbers", "show", MOSCOW_1, "--json")
    shown = json.loads(out)
    assert (shown["owner"], shown["inbound_campaign"], shown["callback_rule"]) == (
        None, None, None)
    assert [e["action"] for e in shown["history"]][:3] == ["release", "enable", "disable"]
    assert shown["history"][0]["actor"].startswith("cli")


async def test_the_numbers_view_and_search(ops):
    await ops("numbers", "reserve", ACME, MOSCOW_1)
    await ops("campaigns", "set", "acme-sale", "--caller-id", "8 495 111-00-01")
    code, out = await ops("numbers", "list", "--account", ACME)
    assert "reserved numbers: landline 1" in out
    line = next(line for line in out.splitlines() if line.startswith(MOSCOW_1))
    assert "as_campaign" in line and "acme-sale" in line
    pool_line = next(line for line in out.splitlines() if line.startswith(POOL_1))
    assert "as_campaign" not in pool_line  # no rule for service numbers
    code, out = await ops("numbers", "search", "1110001")
    assert MOSCOW_1 in out and POOL_1 not in out
    code, out = await ops("numbers", "show", "nonsense")
    assert code == 1 and out.startswith("bad_number:")


async def test_number_health_from_the_command_line(ops, settings, redis):
    health = NumberHealthStore(redis, settings.redis.key_prefix)
    now = time.time()
    for n in range(8):
        await health.count(POOL_1, n < 2, now - 60)
    await health.rest(POOL_1, now + 3600, now)
    code, out = await ops("numbers", "health")
    assert code == 0
    [line] = [line for line in out.splitlines() if line.startswith(POOL_1)]
    assert line.split()[1:4] == ["8", "2", "25%"]
    code, out = await ops("numbers", "health", "+7 495 111-00-01", "--json")
    assert code == 0 and json.loads(out) == [
        {"did": MOSCOW_1, "placed": 0, "answered": 0, "rate": None, "rested_until": None}]
    code, out = await ops("numbers", "health", POOL_1, "--json")
    assert json.loads(out)[0]["rested_until"] == now + 3600
    code, out = await ops("numbers", "health", "12")
    assert code == 1 and "is not a phone number" in out


async def test_accounts_campaigns_stock_audit_sync(ops):
    assert (await ops("accounts", "add", "zeta", "--name", "Zeta", "--verified"))[0] == 0
    assert "zeta" in (await ops("accounts", "list"))[1]
    assert "not verified" in (await ops("accounts", "set", "zeta", "--verified", "no"))[1]
    code, out = await ops("numbers", "add", "+7 383 200-00-01")
    assert "(landline, Novosibirsk) to the reservable pool" in out
    code, out = await ops("numbers", "add", "+7 999 200-00-01", "--region", "Kazan",
                          "--service")
    assert "Kazan) to the service pool" in out
    for did, why in (("+7 800 555-35-35", "a toll free number"),
                     ("+44 20 7946 0958", "a number of United Kingdom")):
        code, out = await ops("numbers", "add", did)
        assert (code, out) == (1, f"unsupported_number: {did} is {why}: we keep "
                               + ("mobile and city numbers only" if "800" in did
                                  else "Russian numbers only"))
    code, out = await ops("campaigns", "add", "zeta-line", "--account", "zeta", "--kind",
                          "inbound")
    assert code == 0
    code, out = await ops("campaigns", "add", "zeta-sale", "--account", "zeta", "--kind",
                          "outbound", "--caller-id", MOSCOW_1)
    assert code == 1 and out.startswith("not_verified:")
    code, out = await ops("campaigns", "list", "--account", "zeta", "--json")
    assert [c["id"] for c in json.loads(out)] == ["zeta-line"]
    code, out = await ops("audit", "--subject", "zeta-sale")
    assert "create_campaign" in out and "not_verified" in out
    code, out = await ops("sync")
    assert code == 0 and "published 4 accounts, 8 numbers, 6 campaigns" in out


async def test_a_campaigns_scenario_from_the_command_line(ops, tmp_path, capsys):
    document = {"play": "hello", "operators": {"queue": "sales", "ring_timeout": 30},
                "no_answer": {"play": "sorry-busy"}}
    code, out = await ops("campaigns", "add", "zeta-line", "--account", ACME, "--kind",
                          "inbound", "--scenario", json.dumps(document))
    assert (code, out.strip()) == (0, "campaign zeta-line added (inbound, running); scenario: "
                                   "plays hello; queue sales, 30 s; no answer: sorry-busy")
    written = tmp_path / "scenario.json"
    written.write_text('{"play": "promo-may", "operators": {"endpoints": ["op-1", "op-2"]}}')
    code, out = await ops("campaigns", "set", "acme-sale", "--scenario", f"@{written}")
    assert code == 0 and out.strip().endswith(
        "scenario: plays promo-may; 1: endpoints op-1 op-2, 20 s")
    code, out = await ops("campaigns", "list", "--json")
    [sale] = [c for c in json.loads(out) if c["id"] == "acme-sale"]
    assert sale["scenario"]["operators"]["endpoints"] == ["op-1", "op-2"]
    # refused: the field and why, nothing changed
    code, out = await ops("campaigns", "set", "acme-sale", "--scenario",
                          '{"play": "../promo", "operators": {"queue": "sales"}}')
    assert (code, out) == (1, "bad_scenario: scenario.play: '../promo' is not a recording name: "
                           "lowercase letters, digits, '-' and '_', 1 to 64 characters, "
                           "no folder, no extension")
    code, out = await ops("campaigns", "set", "acme-sale", "--scenario",
                          '{"play": "promo", "loop": true}')
    assert code == 1
    assert "unknown field(s): loop (known: no_answer, operators, play, version)" in out
    code, out = await ops("campaigns", "set", "acme-sale", "--name", "Spring")
    assert out.strip().endswith("scenario: plays promo-may; 1: endpoints op-1 op-2, 20 s")
    with pytest.raises(SystemExit):
        await ops("campaigns", "set", "acme-sale", "--scenario", "{not json")
    assert "--scenario: not JSON" in capsys.readouterr().err
    code, out = await ops("campaigns", "set", "acme-sale", "--scenario", "none")
    assert out.strip().endswith("scenario: none (its own dialplan context)")


async def test_admin_serves_the_api_until_sigterm(plane_settings, tmp_path, capsys):
    settings = with_admin(plane_settings, port=free_port(), token="",
                          token_file=str(tmp_path / "admin-token"))
    args = parser().parse_args(["admin"])
    task = asyncio.create_task(args.run(settings, args))
    for _ in range(200):
        if "numbers page on" in capsys.readouterr().out:
            break
        await asyncio.sleep(0.02)
    token = (tmp_path / "admin-token").read_text().strip()
    url = f"http://127.0.0.1:{settings.admin.port}/api/health"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            assert (response.status, await response.json()) == (200, {"ok": True, "pending": 0})
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 5) == 0


async def test_users_from_the_command_line(ops, monkeypatch, store_url, tmp_path):
    def typed(password: str) -> None:  # not a terminal: the first line of stdin
        monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))

    typed("a long password")
    assert await ops("users", "add", "Anna", "--account", ACME, "--name", "Anna") == (
        0, "user anna added (acme)\n")
    typed("staff password")
    assert (await ops("users", "add", "sam", "--staff"))[1] == "user sam added (staff)\n"
    typed("a long password")
    code, out = await ops("users", "add", "bob", "--account", "nobody")
    assert (code, out) == (1, "unknown_account: no account nobody")
    typed("short")
    assert (await ops("users", "add", "bob", "--account", ACME))[0] == 1
    code, out = await ops("users", "list")
    assert re.search(r"anna +customer +acme +Anna\n", out)
    assert re.search(r"sam +staff +\(every account\)", out)
    typed("another password")
    assert "every session of theirs has ended" in (await ops("users", "passwd", "anna"))[1]
    assert (await ops("users", "remove", "sam"))[1] == "user sam removed\n"
    demo = Path(__file__).resolve().parents[2] / "config" / "demo-users.toml"
    assert (await ops("users", "load", str(demo)))[1] == "loaded 2 users\n"
    async with await Store.open(store_url) as store:
        users = Users(store)
        for login, password in (("anna", "another password"), ("acme", "acme-demo"),
                                ("newbie", "newbie-demo")):  # the demo's, as its comment says
            assert (await users.sign_in(login, password, "127.0.0.1")).user.login == login
    bad = tmp_path / "users.toml"
    bad.write_text('[[users]]\nlogin = "x"\naccount = "acme"\npassword = "in the clear"\n')
    code, out = await ops("users", "load", str(bad))
    assert code == 1 and "password_hash" in out
    code, out = await ops("audit", "--subject", "user:anna")
    assert re.search(r"cli:\S* +set_password +user:anna +acme +ok", out)
