#!/usr/bin/env python3
"""A classic AGI script, as `AGI(route.py)` runs it: one new process per call, AGI over
stdin/stdout, standard library only. It does the engine's protocol exchange and nothing else:
reads the env block, sends one SET VARIABLE per variable (`NAME=value` arguments, from the
benchmark, so that the count and sizes follow the engine), reads each reply, exits.

It imports nothing but `sys` on purpose: real scripts import more (pyst2, re, a DB driver), so
this is the cheapest process-per-call can be.
"""

import sys


def quote(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main():
    variables = [arg.partition("=")[::2] for arg in sys.argv[1:]]
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
    for name, value in variables:
        sys.stdout.write(f"SET VARIABLE {quote(name)} {quote(value)}\n")
        sys.stdout.flush()
        if not sys.stdin.readline().startswith("200"):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
