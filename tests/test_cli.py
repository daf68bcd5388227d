"""The command line as an operator uses it: load, route, serve on the embedded store, agi-call.

`load` imports into the control plane's SQLite store (here a file under tmp_path), which
publishes to the session's Redis; its past attempts go into the callback history.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from zvonok_agi import cli
from zvonok_agi.cli import main
from zvonok_agi.config import ConfigError, load_settings
from zvonok_agi.store.history import CallbackHistory
from zvonok_agi.store.routing_data import RoutingData

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "config" / "demo-inventory.toml"


def run_cli(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 30
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zvonok_agi", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def cli_env(settings, store_url, tmp_path) -> dict[str, str]:
    """The commands' environment: the session's Redis, the store (SQLite named by the setting
    from before store.url, which still works), JSON logs."""
    env = dict(os.environ)
    env.update(
        ZVONOK_REDIS_URL=settings.redis.url,
        ZVONOK_REDIS_KEY_PREFIX=settings.redis.key_prefix,
        ZVONOK_LOG_FORMAT="json",
        PYTHONPATH=str(ROOT),
    )
    if store_url.startswith("sqlite:"):
        env["ZVONOK_ADMIN_DB_PATH"] = str(tmp_path / "zvonok.db")
    else:
        env["ZVONOK_STORE_URL"] = store_url
    return env


def control_plane_state(env: dict[str, str], cwd: Path) -> list[str]:
    """What the control plane's commands show of the store, as JSON documents."""
    shown = []
    for args in (("numbers", "list", "--json"), ("numbers", "list", "--disabled", "--json"),
                 ("campaigns", "list", "--json"), ("accounts", "list")):
        result = run_cli(*args, env=env, cwd=cwd)
        assert result.returncode == 0, result.stderr
        shown.append(result.stdout)
    return shown


async def redis_state(redis, prefix: str) -> dict[bytes, bytes]:
    """Every key of this test's prefix, serialized."""
    return {key: await redis.dump(key) for key in sorted(await redis.keys(f"{prefix}*"))}


def test_load_then_route_dry_run(cli_env, tmp_path):
    loaded = run_cli("load", str(DEMO), env=cli_env, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded 2 accounts" in loaded.stdout

    def route(caller: str, did: str = "+7 495 123-45-67") -> str:
        result = run_cli("route", "--did", did, "--caller", caller, env=cli_env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return result.stdout

    first = route("8 916 123-45-67")
    assert "route     outbound campaign spring-sale" in first
    assert "ZV_TARGET_CONTEXT=zvonok-outbound-spring-sale" in first
    # A dry run claims nothing: the same question gets the same answer.
    assert "route     outbound campaign spring-sale" in route("79161234567")
    assert "route     inbound campaign support" in route("79162223344")  # answered
    assert "route     outbound campaign debt-reminder" in route("79167654321", "74951234568")
    assert "fallback unknown_number" in route("79161234567", "78125550102")  # disabled
    assert "fallback service_number" in route("anonymous", "74950000002")


def test_load_then_numbers_list_shows_them(cli_env, tmp_path):
    assert run_cli("load", str(DEMO), env=cli_env, cwd=tmp_path).returncode == 0
    [active, disabled, campaigns, accounts] = control_plane_state(cli_env, tmp_path)
    rows = {row["did"]: row for row in json.loads(active)["numbers"]}
    assert len(rows) == 20 and rows["74951234567"]["owner"] == "acme"
    assert rows["74951234567"]["inbound_campaign"] == "support"
    assert [row["did"] for row in json.loads(disabled)["numbers"]] == ["78125550102"]
    assert {c["id"] for c in json.loads(campaigns)} == {
        "spring-sale", "debt-reminder", "pool-promo", "support", "sales-desk"}
    assert "acme" in accounts and "newbie" in accounts
    audit = run_cli("audit", env=cli_env, cwd=tmp_path).stdout
    assert "cli:" in audit and "import" in audit and "inventory" in audit
    # The demo has stock to reserve in the popular cities, and mobiles by region.
    popular = run_cli("numbers", "regions", "landline_popular", env=cli_env, cwd=tmp_path)
    assert re.search(r"Moscow\s+3", popular.stdout)
    assert re.search(r"St Petersburg\s+2", popular.stdout)
    mobile = run_cli("numbers", "regions", "mobile", env=cli_env, cwd=tmp_path).stdout
    assert all(region in mobile for region in ("Moscow", "St Petersburg", "Russia"))


def test_load_rejects_a_bad_file_and_changes_nothing(cli_env, tmp_path, settings):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[accounts]]\nid = "acme"\n\n[[numbers]]\ndid = "not a number"\npool = "service"\n'
    )
    result = run_cli("load", str(bad), env=cli_env, cwd=tmp_path)
    assert result.returncode == 1
    assert "numbers[0]" in result.stderr and "not a phone number" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "zvonok.db").exists()  # the store was not even opened
    route = run_cli("route", "--did", "74951234567", env=cli_env, cwd=tmp_path)
    assert "fallback unknown_number" in route.stdout  # nothing was written


async def test_a_bad_file_leaves_the_store_and_redis_as_they_were(cli_env, tmp_path, settings,
                                                                  redis):
    assert run_cli("load", str(DEMO), env=cli_env, cwd=tmp_path).returncode == 0
    store_before = control_plane_state(cli_env, tmp_path)
    redis_before = await redis_state(redis, settings.redis.key_prefix)
    unreadable = tmp_path / "unreadable.toml"
    unreadable.write_text('[[numbers]]\ndid = "74951234567"\npool = "nowhere"\n')
    # Well formed, but the rules refuse it: acme, no longer verified, cannot show its number.
    refused = tmp_path / "refused.toml"
    refused.write_text(
        '[[accounts]]\nid = "acme"\nname = "Renamed"\n\n'
        '[[campaigns]]\nid = "spring-sale"\naccount = "acme"\nkind = "outbound"\n'
        'caller_id = "74951234567"\n\n'
        '[[numbers]]\ndid = "74951234567"\nowner = "acme"\n'
    )
    for bad, error in ((unreadable, "numbers[0]"), (refused, "not_verified")):
        result = run_cli("load", str(bad), env=cli_env, cwd=tmp_path)
        assert result.returncode == 1 and error in result.stderr, result.stderr
    assert control_plane_state(cli_env, tmp_path) == store_before
    assert await redis_state(redis, settings.redis.key_prefix) == redis_before
    # Only the refusal is written down, as every refused change is.
    audit = run_cli("audit", env=cli_env, cwd=tmp_path).stdout
    assert "not_verified" in audit


async def test_loading_twice_is_idempotent(cli_env, tmp_path, settings, redis):
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        DEMO.read_text()
        + '\n[[attempts]]   # no id: one is made from the content\n'
        'campaign = "pool-promo"\ndid = "74950000002"\ncallee = "79035550000"\nago = "5m"\n'
    )
    prefix = settings.redis.key_prefix
    data = RoutingData(redis, prefix)
    history = CallbackHistory(redis, prefix, settings.routing.callback_window)
    shown = []
    for _ in range(2):
        loaded = run_cli("load", str(inventory), env=cli_env, cwd=tmp_path)
        assert loaded.returncode == 0, loaded.stderr
        assert "21 numbers" in loaded.stdout and "6 attempts" in loaded.stdout
        snapshot = await data.load()
        shown.append((control_plane_state(cli_env, tmp_path),
                      snapshot.accounts, snapshot.numbers, snapshot.campaigns))
    assert shown[0] == shown[1]
    for did, callee in (("74951234567", "79161234567"), ("74950000002", "79035550000")):
        assert len(await history.attempts(did, callee)) == 1  # recorded again, not twice


def test_a_running_engine_follows_a_load(cli_env, tmp_path):
    env = dict(cli_env, ZVONOK_AGI_PORT=str(free_port()))
    engine = subprocess.Popen(
        [sys.executable, "-m", "zvonok_agi", "serve"],
        env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )
    try:
        args = ("agi-call", "--did", "74951234567", "--caller", "79161234567")

        def call_until(expected: str) -> str:
            deadline = time.monotonic() + 20
            while True:
                result = run_cli(*args, env=env, cwd=tmp_path)
                if expected in result.stdout or time.monotonic() > deadline:
                    return result.stdout + result.stderr
                time.sleep(0.2)

        assert "ZV_ROUTE=fallback" in call_until("ZV_ROUTE=")  # up, and knows nothing yet
        assert run_cli("load", str(DEMO), env=env, cwd=tmp_path).returncode == 0
        assert "ZV_TARGET_CONTEXT=zvonok-outbound-spring-sale" in call_until("ZV_ROUTE=outbound")
    finally:
        engine.send_signal(signal.SIGTERM)
        _, log = engine.communicate(timeout=20)
    assert engine.returncode == 0, log


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_engine_routes_on_either_event_loop(cli_env, tmp_path, loop):
    env = dict(cli_env, ZVONOK_AGI_PORT=str(free_port()), ZVONOK_AGI_EVENT_LOOP=loop)
    assert run_cli("load", str(DEMO), env=env, cwd=tmp_path).returncode == 0
    engine = subprocess.Popen(
        [sys.executable, "-m", "zvonok_agi", "serve"],
        env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            result = run_cli("agi-call", "--did", "74951234567", "--caller", "79031112233",
                             env=env, cwd=tmp_path)
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "ZV_DECIDED=1" in result.stdout, result.stderr
    finally:
        engine.send_signal(signal.SIGTERM)
        _, log = engine.communicate(timeout=20)
    assert engine.returncode == 0, log
    lines = [json.loads(line) for line in log.splitlines()]
    assert [line["loop"] for line in lines if line["event"] == "event loop"] == [loop]
    assert [line["event"] for line in lines].count("call routed") == 1


def test_an_event_loop_that_is_not_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if the extra were not installed
    assert cli.event_loop("auto") is None
    with pytest.raises(cli.CommandError, match="zvonok-agi\\[uvloop\\]"):
        cli.event_loop("uvloop")
    with pytest.raises(ConfigError, match="event_loop"):
        load_settings(environ={"ZVONOK_AGI_EVENT_LOOP": "trio"})


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[agi]\nport = 'x'\n")
    assert main(["--config", str(config), "route", "--did", "1"]) == 2
    assert "bad value for agi.port" in capsys.readouterr().err


def test_serve_on_the_embedded_store_then_agi_call(tmp_path):
    """The README's run: no Redis URL, so the engine runs its own Redis under var/redis; the
    numbers page is served by the same process."""
    env = dict(os.environ)
    admin_port = free_port()
    env.update(ZVONOK_AGI_PORT=str(free_port()), ZVONOK_ADMIN_PORT=str(admin_port),
               ZVONOK_ADMIN_TOKEN="demo-token", ZVONOK_LOG_FORMAT="json", PYTHONPATH=str(ROOT))
    env.pop("ZVONOK_REDIS_URL", None)
    assert run_cli("load", str(DEMO), env=env, cwd=tmp_path).returncode == 0
    engine = subprocess.Popen(
        [sys.executable, "-m", "zvonok_agi", "serve", "--admin"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        args = ("agi-call", "--did", "74951234567", "--caller", "79161234567")
        deadline = time.monotonic() + 20
        while True:
            result = run_cli(*args, env=env, cwd=tmp_path)
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert result.returncode == 0, result.stderr
        assert "ZV_ROUTE=outbound" in result.stdout
        assert "ZV_TARGET_CONTEXT=zvonok-outbound-spring-sale" in result.stdout
        again = run_cli(*args, env=env, cwd=tmp_path)
        assert "ZV_ROUTE=inbound" in again.stdout
        page = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/", timeout=5)
        assert page.status == 200 and b"<html" in page.read().lower()
        numbers = urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{admin_port}/api/numbers",
            headers={"Authorization": "Bearer demo-token"}), timeout=5)
        assert "74951234567" in numbers.read().decode()
    finally:
        engine.send_signal(signal.SIGTERM)
        printed, log = engine.communicate(timeout=20)
    assert engine.returncode == 0, log
    assert f"numbers page on http://127.0.0.1:{admin_port}/" in printed
    events = [json.loads(line).get("event") for line in log.splitlines()]
    assert "call routed" in events
    # The admin server starts before the engine listens: its start no longer holds the
    # engine's loop long enough for the routing data's blocking read to time out.
    assert "background loop step failed; going on" not in events
    assert (tmp_path / "var" / "redis" / "appendonly.aof").exists()


def test_agi_call_without_a_server_says_so(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ("agi-call", "--did", "1", "--port", str(free_port()), "--timeout", "1")
    result = run_cli(*args, env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "no FastAGI session" in result.stderr
