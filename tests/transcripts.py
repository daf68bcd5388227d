"""Reader of the byte-level transcripts recorded against a real Asterisk (shared/).

A transcript line such as

    03:17:02.728 [conn 1] << b'agi_network: yes\\n'

is one chunk of bytes: `<<` sent by Asterisk, `>>` sent by our side, written as a Python bytes
repr (`<< b''` is EOF). Reading stops at the first `====` line: after it come Asterisk's log
and the SIP messages, which are not part of the session.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import NamedTuple

# The folder `shared/` lies beside the repository root.
TRANSCRIPTS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "asterisk-transcripts"

FROM_ASTERISK = "<<"
FROM_SERVER = ">>"

# time, optional `[conn N]`, direction, optional `EOF` (the AMI logs write `<< EOF b''`), bytes
_ENTRY = re.compile(r"^\S+ (?:\[conn \d+\] )?(<<|>>) (?:EOF )?(b(['\"]).*\3)\s*$")


class Entry(NamedTuple):
    direction: str  # FROM_ASTERISK or FROM_SERVER
    data: bytes  # b"" is EOF


def read_transcript(path: Path) -> list[Entry]:
    """The ordered (direction, bytes) entries of a transcript file."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("===="):
            break
        match = _ENTRY.match(line)
        if match is None:
            continue
        data = ast.literal_eval(match.group(2))
        if not isinstance(data, bytes):
            raise TypeError(f"{path.name}: not a bytes literal: {line!r}")
        entries.append(Entry(match.group(1), data))
    return entries


def agi_transcripts() -> list[Path]:
    """Every `agi_*.txt` transcript, sorted by name."""
    return sorted(TRANSCRIPTS_DIR.glob("agi_*.txt"))
