"""Who can reach the admin API: loopback unless the settings say otherwise, and a generated
token that stays out of the logs (a file only its owner reads, reused at the next start)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from conftest import free_port
from web_helpers import helpers
from zvonok_agi import cli
from zvonok_agi.config import ConfigError, load_settings
from zvonok_agi.numbers.service import NumbersService
from zvonok_agi.web.server import AdminServer
from zvonok_agi.web.token import stored_token

ROOT = Path(__file__).resolve().parents[2]
REMOTE = ["0.0.0.0", "", "::", "192.0.2.7", "2001:db8::1", "admin.example.net"]
LOOPBACK = ["127.0.0.1", "127.0.0.2", "::1", "localhost"]


# the bind address


@pytest.mark.parametrize("host", REMOTE)
def test_a_non_loopback_admin_host_is_refused_unless_allowed(host):
    with pytest.raises(ConfigError, match=r"admin\.host .* admin\.allow_remote = true"):
        load_settings(environ={"ZVONOK_ADMIN_HOST": host})
    allowed = load_settings(
        environ={"ZVONOK_ADMIN_HOST": host, "ZVONOK_ADMIN_ALLOW_REMOTE": "true"}
    )
    assert (allowed.admin.host, allowed.admin.allow_remote) == (host, True)


@pytest.mark.parametrize("host", LOOPBACK)
def test_a_loopback_admin_host_needs_nothing(host):
    assert load_settings(environ={"ZVONOK_ADMIN_HOST": host}).admin.allow_remote is False


def test_the_cli_says_why_and_exits_non_zero(monkeypatch, capsys):
    monkeypatch.delenv("ZVONOK_CONFIG", raising=False)
    monkeypatch.setenv("ZVONOK_ADMIN_HOST", "0.0.0.0")
    assert cli.main(["admin"]) == 2
    err = capsys.readouterr().err
    assert "admin.host '0.0.0.0' is not a loopback address" in err
    assert "admin.allow_remote = true" in err


def test_the_server_itself_refuses_a_remote_bind():
    service = NumbersService(store=None, data=None)  # never reached
    with pytest.raises(ValueError, match="not a loopback address"):
        AdminServer(service, token="t" * 16, host="0.0.0.0")


# the generated token


async def run_admin(settings, capsys) -> tuple[str, asyncio.Task]:
    """`zvonok-agi admin` in this process: what it printed once listening, and its task."""
    args = cli._parser().parse_args(["admin"])
    task = asyncio.create_task(args.run(settings, args))
    printed = ""
    for _ in range(250):
        printed += capsys.readouterr().out
        if "numbers page on" in printed:
            return printed, task
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    raise AssertionError(f"the admin API did not start: {printed!r}")


async def stop(task: asyncio.Task) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 5) == 0


async def health(port: int, token: str) -> int:
    url = f"http://127.0.0.1:{port}/api/health"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            return response.status


@pytest.fixture
def admin_settings(settings, tmp_path):
    return helpers.with_admin(
        settings,
        db_path=str(tmp_path / "numbers.db"),
        port=free_port(),
        token="",
        token_file=str(tmp_path / "var" / "admin-token"),
    )


async def test_a_generated_token_is_kept_in_a_private_file_and_reused(admin_settings, capsys):
    path = Path(admin_settings.admin.token_file)
    printed, task = await run_admin(admin_settings, capsys)
    token = path.read_text("utf-8").strip()
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in printed, "not a terminal: the token is not printed"
    assert str(path) in printed, "where to find it"
    assert await health(admin_settings.admin.port, token) == 200
    await stop(task)

    printed, task = await run_admin(admin_settings, capsys)
    assert path.read_text("utf-8").strip() == token, "the same token after a restart"
    assert await health(admin_settings.admin.port, token) == 200
    await stop(task)


async def test_on_a_terminal_the_address_with_the_token_is_printed(
    admin_settings, capsys, monkeypatch
):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    printed, task = await run_admin(admin_settings, capsys)
    token = Path(admin_settings.admin.token_file).read_text("utf-8").strip()
    assert f"http://127.0.0.1:{admin_settings.admin.port}/#token={token}" in printed
    await stop(task)


async def test_a_token_file_others_can_read_is_refused(admin_settings):
    path = Path(admin_settings.admin.token_file)
    path.parent.mkdir()
    path.write_text("a-token-someone-else-may-have-read\n", "utf-8")
    path.chmod(0o644)
    args = cli._parser().parse_args(["admin"])
    with pytest.raises(cli.CommandError, match=r"open to other users .* chmod 600"):
        await args.run(admin_settings, args)


def test_an_empty_token_file_gets_a_new_token(tmp_path):
    path = tmp_path / "admin-token"
    path.touch(0o600)  # a start that stopped before writing
    token = stored_token(path)
    assert token and path.read_text("utf-8") == token + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stored_token(path) == token


async def test_a_configured_token_makes_no_file(admin_settings, capsys):
    settings = replace(admin_settings, admin=replace(admin_settings.admin, token="t" * 24))
    printed, task = await run_admin(settings, capsys)
    assert "t" * 24 not in printed
    assert not Path(settings.admin.token_file).exists()
    assert await health(settings.admin.port, "t" * 24) == 200
    await stop(task)


def test_no_log_line_holds_the_token(settings, tmp_path):
    """`zvonok-agi admin` as a service runs it: logs as JSON, output to a pipe (the journal)."""
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        ZVONOK_LOG_FORMAT="json",
        ZVONOK_REDIS_URL=settings.redis.url,
        ZVONOK_ADMIN_PORT=str(port),
        ZVONOK_ADMIN_DB_PATH=str(tmp_path / "numbers.db"),
    )
    for name in ("ZVONOK_CONFIG", "ZVONOK_ADMIN_TOKEN", "ZVONOK_ADMIN_TOKEN_FILE"):
        env.pop(name, None)
    admin = subprocess.Popen(
        [sys.executable, "-m", "zvonok_agi", "admin"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    token_file = tmp_path / "var" / "admin-token"
    try:
        deadline = time.monotonic() + 20
        while not (token_file.exists() and _listening(port)):
            assert admin.poll() is None and time.monotonic() < deadline, "did not start"
            time.sleep(0.05)
    finally:
        admin.send_signal(signal.SIGTERM)
        out, err = admin.communicate(timeout=20)
    assert admin.returncode == 0, err
    token = token_file.read_text("utf-8").strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(json.loads(line) for line in lines)
    assert any(json.loads(line)["event"] == "admin API listening" for line in lines)
    assert token not in err and token not in out
    assert str(token_file) in out


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
