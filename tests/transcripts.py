"""Reader of the byte-level transcripts recorded against a real Asterisk.

The recordings live in `tests/fixtures/asterisk/`, copied from `shared/asterisk-transcripts`
(beside the repository, where new ones arrive): a fresh clone has no `shared/`, and
test_fixtures.py checks that the copies have not drifted from the originals.

Two line formats carry one chunk of bytes each, as a Python bytes repr:

    03:17:02.728 [conn 1] << b'agi_network: yes\\n'            (`<<` Asterisk, `>>` our side)
    [s1 +   0.399 ms] ASTERISK->ENGINE b'agi_network: yes\\n'  (`ENGINE->ASTERISK EOF`: EOF)

`<< b''` is EOF too. Reading stops at the first `====` line: after it come Asterisk's log and
the SIP messages, which are not part of the session.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import NamedTuple

TRANSCRIPTS_DIR = Path(__file__).resolve().parent / "fixtures" / "asterisk"

FROM_ASTERISK = "<<"
FROM_SERVER = ">>"

# time, optional `[conn N]`, direction, optional `EOF` (the AMI logs write `<< EOF b''`), bytes
_CONN_ENTRY = re.compile(r"^\S+ (?:\[conn (\d+)\] )?(<<|>>) (?:EOF )?(b(['\"]).*\4)\s*$")
# `[s<N> + <ms> ms]`, who sent it, then the bytes or EOF
_SESSION_ENTRY = re.compile(
    r"^\[s(\d+) \+\s*[\d.]+ ms\] (ASTERISK->ENGINE|ENGINE->ASTERISK) (EOF|b(['\"]).*\4)\s*$"
)
_DIRECTION = {"ASTERISK->ENGINE": FROM_ASTERISK, "ENGINE->ASTERISK": FROM_SERVER}


class Entry(NamedTuple):
    direction: str  # FROM_ASTERISK or FROM_SERVER
    data: bytes  # b"" is EOF


def read_sessions(path: Path) -> dict[str, list[Entry]]:
    """The ordered (direction, bytes) entries of each session in a transcript file, by session
    (`conn N` or `sN`), in the order the sessions start."""
    sessions: dict[str, list[Entry]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("===="):
            break
        if match := _CONN_ENTRY.match(line):
            session, direction, literal = f"conn {match.group(1)}", match.group(2), match.group(3)
        elif match := _SESSION_ENTRY.match(line):
            session, direction = f"s{match.group(1)}", _DIRECTION[match.group(2)]
            literal = "b''" if match.group(3) == "EOF" else match.group(3)
        else:
            continue
        data = ast.literal_eval(literal)
        if not isinstance(data, bytes):
            raise TypeError(f"{path.name}: not a bytes literal: {line!r}")
        sessions.setdefault(session, []).append(Entry(direction, data))
    return sessions


def read_transcript(path: Path) -> list[Entry]:
    """The entries of a transcript that holds at most one session."""
    sessions = read_sessions(path)
    if len(sessions) > 1:
        raise ValueError(f"{path.name} holds {len(sessions)} sessions: use read_sessions")
    return next(iter(sessions.values()), [])


def agi_transcripts() -> list[Path]:
    """Every `agi_*.txt` transcript, sorted by name."""
    return sorted(TRANSCRIPTS_DIR.glob("agi_*.txt"))
