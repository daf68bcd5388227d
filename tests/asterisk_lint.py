"""Runs asterisklint (the test extra's dialplan linter) the same way for every test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _executable() -> str:
    # The one installed beside this Python first: the venv's bin may not be on PATH.
    beside_python = Path(sys.executable).parent / "asterisklint"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("asterisklint")
    if found is None:
        pytest.fail("asterisklint not found: install the test extra (pip install -e '.[test]')")
    return found


def asterisklint(command: str, path: Path) -> subprocess.CompletedProcess[str]:
    """`asterisklint <command> <path>` (e.g. dialplan-check, modules-show), run in the file's
    folder, with nothing suppressed."""
    env = dict(os.environ)
    env.pop("ALINT_IGNORE", None)  # no known false positive to hide
    return subprocess.run(
        [_executable(), command, str(path)],
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
