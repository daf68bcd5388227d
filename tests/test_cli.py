"""The command line as an operator uses it: load, route, serve on the embedded store, agi-call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port
from zvonok_agi.cli import main

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
def cli_env(settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ZVONOK_REDIS_URL=settings.redis.url,
        ZVONOK_REDIS_KEY_PREFIX=settings.redis.key_prefix,
        ZVONOK_LOG_FORMAT="json",
        PYTHONPATH=str(ROOT),
    )
    return env


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


def test_load_rejects_a_bad_file_and_changes_nothing(cli_env, tmp_path, settings):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[accounts]]\nid = "acme"\n\n[[numbers]]\ndid = "not a number"\npool = "service"\n'
    )
    result = run_cli("load", str(bad), env=cli_env, cwd=tmp_path)
    assert result.returncode == 1
    assert "numbers[0]" in result.stderr and "not a phone number" in result.stderr
    route = run_cli("route", "--did", "74951234567", env=cli_env, cwd=tmp_path)
    assert "fallback unknown_number" in route.stdout  # nothing was written


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[agi]\nport = 'x'\n")
    assert main(["--config", str(config), "route", "--did", "1"]) == 2
    assert "bad value for agi.port" in capsys.readouterr().err


def test_serve_on_the_embedded_store_then_agi_call(tmp_path):
    """The README's run: no Redis URL, so the engine runs its own Redis under var/redis."""
    env = dict(os.environ)
    env.update(ZVONOK_AGI_PORT=str(free_port()), ZVONOK_LOG_FORMAT="json", PYTHONPATH=str(ROOT))
    env.pop("ZVONOK_REDIS_URL", None)
    assert run_cli("load", str(DEMO), env=env, cwd=tmp_path).returncode == 0
    engine = subprocess.Popen(
        [sys.executable, "-m", "zvonok_agi", "serve"],
        env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
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
    finally:
        engine.send_signal(signal.SIGTERM)
        _, log = engine.communicate(timeout=20)
    assert engine.returncode == 0, log
    assert '"event": "call routed"' in log
    assert (tmp_path / "var" / "redis" / "appendonly.aof").exists()


def test_agi_call_without_a_server_says_so(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ("agi-call", "--did", "1", "--port", str(free_port()), "--timeout", "1")
    result = run_cli(*args, env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "no FastAGI session" in result.stderr
