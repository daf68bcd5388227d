"""`zvonok-agi store copy` on a hosted dialer's inventory: SQLite to PostgreSQL and back, how
fast, and how much memory the copying process takes as the store grows.

    python bench/copy_bench.py                   # 50,000 numbers (and 5,000 for the memory ratio)
    python bench/copy_bench.py --numbers 500000  # the issue's full size (~10 min)

It imports bench/inventory_gen.py's inventory (10 numbers per account, 2 campaigns each) into a
SQLite file, then runs the command as an operator would, in a process of its own: the file
into a schema of a private PostgreSQL cluster (Debian's postgresql package, as the tests
start it, commits synced to the disk), and that schema into a new SQLite file. Each copy's
rows per second (every table: numbers, accounts, campaigns, the import's audit row, and the
outbox rows it left for Redis, which this import skips) and the copying process's peak RSS
(its VmHWM). The same two copies of an inventory a tenth as large give the RSS to compare
with: the copy streams, so its memory does not follow the store's size.

Goals (PASS/FAIL, exit status 1 on a FAIL): each copy >= 20,000 rows/s (the loader's goal of
issue 10), and its peak RSS at full size <= 1.25 x the one at a tenth of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from inventory_gen import write as write_inventory
from local_servers import free_port
from zvonok_agi.numbers.importer import read_file
from zvonok_agi.numbers.service import NumbersService
from zvonok_agi.numbers.store import Store

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' private PostgreSQL cluster
from postgres_server import PostgresServer, binaries, sql  # noqa: E402

GOAL_ROWS = 20_000  # rows/s
GOAL_RSS_RATIO = 1.25


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


async def imported(path: Path, inventory: Path) -> None:
    """The inventory into a new SQLite file, Redis away: the outbox keeps every record."""
    records, overrides = read_file(inventory)
    async with await Store.open(path) as store:
        await NumbersService(store, None).import_inventory("bench", records, overrides)


# The command, then its own peak RSS (VmHWM) on stderr. Not the rusage of a child: that starts
# from this process's (the inventory it imported), inherited at the fork.
COMMAND = """
import sys
from zvonok_agi.cli import main
code = main(sys.argv[1:])
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(peak.split()[1]), file=sys.stderr)
sys.exit(code)
"""


def copy(source: str, target: str) -> tuple[int, float, float]:
    """Runs `zvonok-agi store copy` in a process of its own: rows copied, seconds, and the
    process's peak RSS in MB."""
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", COMMAND, "store", "copy", "--from", source, "--to", target],
        capture_output=True,
        text=True,
        env={**os.environ, "ZVONOK_LOG_LEVEL": "warning"},
    )
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"the copy failed: {done.stdout}{done.stderr}")
    counts = done.stdout.split(": ", 1)[1].split(", ")
    rows = sum(int(count.split()[0]) for count in counts)
    return rows, seconds, int(done.stderr.split()[-1]) / 1024  # VmHWM is in kB


def round_trip(tmp: Path, server: str, numbers: int) -> list[tuple[str, int, float, float]]:
    """The inventory of `numbers` into SQLite, copied to PostgreSQL and back."""
    inventory = tmp / f"inventory-{numbers}.jsonl"
    write_inventory(inventory, numbers, max(1, numbers // 10))
    original = tmp / f"original-{numbers}.db"
    asyncio.run(imported(original, inventory))
    schema = f"copy_{uuid.uuid4().hex[:8]}"
    asyncio.run(sql(server, f"CREATE SCHEMA {schema}"))
    try:
        postgres = f"{server}?search_path={schema}"
        there = copy(str(original), postgres)
        back = copy(postgres, str(tmp / f"back-{numbers}.db"))
    finally:
        asyncio.run(sql(server, f"DROP SCHEMA {schema} CASCADE"))
    return [("SQLite -> PostgreSQL", *there), ("PostgreSQL -> SQLite", *back)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=50_000)
    args = parser.parse_args(argv)
    bin_dir = binaries()
    if bin_dir is None:
        sys.exit("PostgreSQL is not installed (apt-get install postgresql)")
    print(f"copy_bench: {args.numbers:,} numbers; {os.cpu_count()} cores, {load()}")
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="copy-bench-") as folder:
        cluster = PostgresServer(bin_dir, free_port(), durable=True)
        cluster.start()
        try:
            small = round_trip(Path(folder), cluster.url, max(1, args.numbers // 10))
            full = round_trip(Path(folder), cluster.url, args.numbers)
        finally:
            cluster.stop()
    for (way, rows, seconds, rss), (_, _, _, small_rss) in zip(full, small, strict=True):
        rate = rows / seconds
        print(
            f"  {way}: {rows:,} rows in {seconds:.1f} s, {rate:,.0f} rows/s; peak RSS "
            f"{rss:.0f} MB ({small_rss:.0f} MB at a tenth of the size)   ({load()})"
        )
        verdicts.append(verdict(f"{way} >= {GOAL_ROWS:,} rows/s ({rate:,.0f})", rate >= GOAL_ROWS))
        verdicts.append(
            verdict(
                f"{way}: peak RSS <= {GOAL_RSS_RATIO:g} x a tenth's ({rss / small_rss:.2f} x)",
                rss <= GOAL_RSS_RATIO * small_rss,
            )
        )
    print(f"\ngoals ({load()})")
    for line in verdicts:
        print("  " + line)
    return 1 if any(line.startswith("FAIL") for line in verdicts) else 0


def verdict(goal: str, passed: bool) -> str:
    return f"{'PASS' if passed else 'FAIL'}  {goal}"


if __name__ == "__main__":
    sys.exit(main())
