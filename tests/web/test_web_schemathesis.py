"""The served OpenAPI document and the server agree: Schemathesis, in a short run, against a
real `zvonok-agi admin` process (a real SQLite file, the session's real Redis).

Every check is on: the server accepts what the document calls valid (a rule may still refuse
it: 403, 404, 409), refuses what it calls invalid, answers with the statuses, headers and
bodies it documents, never a 5xx. The seed is fixed so that a run is the same everywhere;
$ZVONOK_SCHEMATHESIS_SEED explores others, $ZVONOK_SCHEMATHESIS_EXAMPLES runs longer.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port
from web_helpers import TOKEN, helpers

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(SCHEMATHESIS is None, reason="needs the schemathesis package")


async def _small_world(settings, store_url: str) -> None:
    async with helpers.control_plane(settings, store_url) as service:
        await helpers.small_world(service)


@pytest.fixture
def admin_url(settings, store_url, tmp_path):
    """`zvonok-agi admin` on a free port over the small world; its base URL."""
    asyncio.run(_small_world(settings, store_url))
    config = tmp_path / "zvonok.toml"
    config.write_text(
        f'[redis]\nurl = "{settings.redis.url}"\nkey_prefix = "{settings.redis.key_prefix}"\n'
        f'[admin]\nport = {free_port()}\ntoken = "{TOKEN}"\n[store]\nurl = "{store_url}"\n'
        '[log]\nformat = "json"\nlevel = "warning"\n'
    )
    log = tmp_path / "admin.log"
    with (
        log.open("w") as errors,
        subprocess.Popen(
            [sys.executable, "-m", "zvonok_agi", "--config", str(config), "admin"],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        ) as admin,
    ):
        try:
            assert admin.stdout is not None
            started = admin.stdout.readline()
            found = re.search(r"on (http://\S+)/", started)
            assert found, started + log.read_text()
            yield found.group(1)
        finally:
            admin.terminate()
            assert admin.wait(timeout=10) == 0, log.read_text()


@pytest.mark.timeout(300)
def test_the_served_document_and_the_server_agree(admin_url, tmp_path):
    config = tmp_path / "schemathesis.toml"
    # Trying every other HTTP method on every path is the slow part of the coverage phase;
    # one is enough to hold that an undocumented method is a 405 with an Allow header.
    config.write_text('[phases.coverage]\nunexpected-methods = ["put"]\n')
    # One worker: with two threads, Hypothesis describing its filters (ast.parse) now and then
    # ends the run in "SystemError: AST constructor recursion depth mismatch", CPython 3.11's
    # thread race of gh-106905; on a 2-core machine one worker is about as fast.
    run = subprocess.run(
        [
            SCHEMATHESIS,
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"{admin_url}/api/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            "all",
            "--workers",
            "1",
            "--max-examples",
            os.environ.get("ZVONOK_SCHEMATHESIS_EXAMPLES", "3"),
            "--seed",
            os.environ.get("ZVONOK_SCHEMATHESIS_SEED", "8"),
            # A phone number's pattern and length together filter out many drawn strings.
            "--suppress-health-check",
            "filter_too_much",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert re.search(r"\b\d+ generated, \d+ passed", run.stdout), run.stdout[-3000:]
