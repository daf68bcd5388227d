"""A container healthcheck: is the engine's heartbeat file fresh?

    python -m zvonok_agi.healthcheck FILE [MAX_AGE]

Exit status 0 when FILE (`watchdog.heartbeat_file`) was touched within MAX_AGE seconds (3 by
default), else 1 with the reason. The engine's watchdog touches it every second while the
event loop runs, so a process frozen from outside (SIGSTOP, a paused cgroup) turns unhealthy.
Standard library only: it runs every few seconds and must start fast.
"""

from __future__ import annotations

import os
import sys
import time

DEFAULT_MAX_AGE = 3.0


def check(path: str, max_age: float = DEFAULT_MAX_AGE) -> str | None:
    """None when healthy, else why not."""
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError as exc:
        return f"no heartbeat file: {exc}"
    if age > max_age:
        return f"heartbeat {age:.1f} s old (more than {max_age:g} s): the engine is not running"
    return None


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: python -m zvonok_agi.healthcheck FILE [MAX_AGE]", file=sys.stderr)
        return 2
    try:
        max_age = float(argv[1]) if len(argv) > 1 else DEFAULT_MAX_AGE
    except ValueError:
        print(f"MAX_AGE must be a number of seconds, not {argv[1]!r}", file=sys.stderr)
        return 2
    problem = check(argv[0], max_age)
    if problem is not None:
        print(problem)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
