"""The recordings the tests replay are copies: they must not drift from the originals.

New recordings arrive in `shared/asterisk-transcripts`, beside the repository. A fresh clone
has no `shared/` and runs on the copies alone; where `shared/` is there, the two must agree.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from transcripts import TRANSCRIPTS_DIR

ORIGINALS = Path(__file__).resolve().parents[2] / "shared" / "asterisk-transcripts"


def test_the_copies_are_in_the_repository() -> None:
    assert len(list(TRANSCRIPTS_DIR.glob("agi_*.txt"))) >= 6
    assert len(list(TRANSCRIPTS_DIR.glob("ami_*.raw"))) >= 10
    assert (TRANSCRIPTS_DIR / "README.txt").is_file()


@pytest.mark.skipif(not ORIGINALS.is_dir(), reason="no shared/asterisk-transcripts beside the repo")
def test_the_copies_equal_the_originals() -> None:
    originals = {path.name: path.read_bytes() for path in ORIGINALS.iterdir() if path.is_file()}
    copies = {path.name: path.read_bytes() for path in TRANSCRIPTS_DIR.iterdir() if path.is_file()}
    assert sorted(copies) == sorted(originals), "copy new recordings into tests/fixtures/asterisk"
    changed = sorted(name for name in originals if copies[name] != originals[name])
    assert not changed, f"recordings differ from shared/asterisk-transcripts: {changed}"
