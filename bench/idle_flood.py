"""Idle connections against a FastAGI server: each connects, sends nothing, and reconnects as
soon as the server closes it. For `fastagi_bench.py --idle-flood`, in a process of its own.

    python bench/idle_flood.py PORT [--connections 1000] [--seconds 30]

Loopback only, bounded in time (SIGTERM ends it sooner). Prints "ready" once every connection
is open the first time, then at the end one JSON line: connects made, closes by the server,
failed connects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import sys

HOST = "127.0.0.1"


async def flood(port: int, connections: int, seconds: float) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stats = {"connects": 0, "closed_by_server": 0, "failed_connects": 0}
    opened = 0
    ready = asyncio.Event()

    async def idle() -> None:
        nonlocal opened
        first = True
        while loop.time() < end:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                stats["failed_connects"] += 1
                await asyncio.sleep(0.05)
                continue
            stats["connects"] += 1
            if first:
                first = False
                opened += 1
                if opened == connections:
                    ready.set()
            try:
                async with asyncio.timeout_at(end):
                    await reader.read()  # the server's close (or a reset)
                stats["closed_by_server"] += 1
            except (TimeoutError, ConnectionError):
                pass
            finally:
                writer.close()

    tasks = [asyncio.create_task(idle()) for _ in range(connections)]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await ready.wait()
            print("ready", flush=True)
    everything = asyncio.gather(*tasks, return_exceptions=True)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([everything, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    for task in tasks:
        task.cancel()
    await everything
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    if not 0 < args.seconds <= 600 or not 0 < args.connections <= 20_000:
        parser.error("seconds in (0, 600], connections in (0, 20000]")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    stats = asyncio.run(flood(args.port, args.connections, args.seconds))
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
