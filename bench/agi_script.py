#!/usr/bin/env python3
"""A classic AGI script, as `AGI(route.py)` runs it: one new process per call, AGI over
stdin/stdout, standard library only. It does the engine's protocol exchange and nothing else:
reads the env block, sends the engine's commands for a call (one JSON argument, from the
benchmark, so that the count and sizes follow the engine), reads each reply, exits.

It imports nothing but `sys` and `json` on purpose: real scripts import more (pyst2, re, a DB
driver), so this is the cheapest process-per-call can be.
"""

import json
import sys


def quote(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main():
    commands = json.loads(sys.argv[1])
    env = {}
    while True:
        line = sys.stdin.readline()
        if not line:
            return 1
        line = line.rstrip("\n")
        if not line:
            break
        key, _, value = line.partition(":")
        env[key] = value.strip()
    for verb, *args in commands:
        sys.stdout.write(" ".join([verb, *map(quote, args)]) + "\n")
        sys.stdout.flush()
        if not sys.stdin.readline().startswith("200"):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
