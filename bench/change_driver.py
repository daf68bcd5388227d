"""Customers changing their numbers through the admin API, at a fixed rate, in a process of
its own: scale_bench.py's calls are timed in its event loop, and an HTTP client's work there
would be added to every call in flight.

    python bench/change_driver.py ADMIN_URL TOKEN ENGINE_PORT DIDS_FILE RESULTS_FILE \
        --rate 50 --duration 30 [--probe-every 10] [--seed 11]

It prints `ready` once set up and starts on the next line read from stdin. Each change takes a
number of its own from DIDS_FILE (one per line): PATCH /api/numbers/{did} unbinds it and sets a
new callback rule. Every --probe-every-th change is then followed by calls to that number every
5 ms until the engine routes by it. RESULTS_FILE gets one JSON object per change (`Change`);
the times are `time.monotonic()`, the same clock in every process of the machine. Its last
line on stdout is the CPU seconds it used from then on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from fastagi_bench import SESSION_TIMEOUT, AsteriskSide
from local_servers import HOST
from zvonok_agi.agi.client import recorded_environment

PROBE_INTERVAL = 0.005
PROBE_GIVE_UP = 10.0


@dataclass
class Change:
    did: str
    sent: float
    answered: float | None = None  # the admin API's response
    seen: float | None = None  # the engine routes by it (probed changes only)
    error: str = ""


async def route_of(port: int, did: str, caller: str) -> dict[str, str]:
    """One FastAGI session to the engine: the variables it set."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    env = recorded_environment(did, caller, "inbound", HOST, port)
    transport, side = await loop.create_connection(lambda: AsteriskSide(env, done), HOST, port)
    try:
        async with asyncio.timeout(SESSION_TIMEOUT):
            await done
    finally:
        transport.close()
    return side.channel.variables


class Changer:
    """Changes through the admin API at a fixed rate (open loop); some followed by probes."""

    def __init__(
        self,
        admin: str,
        token: str,
        engine_port: int,
        dids: list[str],
        probe_every: int,
        rng: random.Random,
    ) -> None:
        self.admin = admin
        self.headers = {"Authorization": f"Bearer {token}"}
        self.engine_port = engine_port
        self.dids = iter(dids)
        self.probe_every = probe_every
        self.rng = rng

    async def run(self, rate: float, duration: float) -> list[Change]:
        changes: list[Change] = []
        tasks = []
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession(headers=self.headers) as http:
            t0 = loop.time()
            for i in range(int(rate * duration)):
                delay = t0 + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                change = Change(next(self.dids), time.monotonic())
                changes.append(change)
                tasks.append(
                    asyncio.create_task(self._change(http, change, probe=i % self.probe_every == 0))
                )
            await asyncio.gather(*tasks)
        return changes

    async def _change(self, http: aiohttp.ClientSession, change: Change, probe: bool) -> None:
        body = {
            "inbound_campaign": None,
            "callback_rule": self.rng.choice(["force_yes", "force_no", "as_campaign"]),
        }
        try:
            async with http.patch(f"{self.admin}/api/numbers/{change.did}", json=body) as reply:
                if reply.status != 200:
                    change.error = f"HTTP {reply.status}: {(await reply.text())[:120]}"
                    return
            change.answered = time.monotonic()
        except aiohttp.ClientError as exc:
            change.error = type(exc).__name__
            return
        if probe:
            await self._probe(change)

    async def _probe(self, change: Change) -> None:
        deadline = change.sent + PROBE_GIVE_UP
        while time.monotonic() < deadline:
            caller = f"7903{self.rng.randrange(10**7):07d}"
            with contextlib.suppress(OSError, TimeoutError):
                variables = await route_of(self.engine_port, change.did, caller)
                if variables.get("ZV_FALLBACK") == "no_inbound_campaign":
                    change.seen = time.monotonic()
                    return
            await asyncio.sleep(PROBE_INTERVAL)
        change.error = "never seen by the engine"


def read_changes(path: Path) -> list[Change]:
    return [Change(**json.loads(line)) for line in path.read_text().splitlines()]


async def amain(args: argparse.Namespace) -> None:
    dids = Path(args.dids).read_text().split()
    changer = Changer(
        args.admin, args.token, args.engine_port, dids, args.probe_every, random.Random(args.seed)
    )
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    cpu = time.process_time()
    changes = await changer.run(args.rate, args.duration)
    Path(args.results).write_text("".join(json.dumps(asdict(c)) + "\n" for c in changes))
    print(f"cpu {time.process_time() - cpu:.3f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("admin", help="the admin API's base URL")
    p.add_argument("token", help="a staff bearer token")
    p.add_argument("engine_port", type=int)
    p.add_argument("dids", help="a file of numbers to change, one per line, each used once")
    p.add_argument("results", help="where to write the changes, one JSON object per line")
    p.add_argument("--rate", type=float, required=True, help="changes per second")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.add_argument("--probe-every", type=int, default=10, help="follow every Nth change")
    p.add_argument("--seed", type=int, default=11)
    asyncio.run(amain(p.parse_args(argv)))


if __name__ == "__main__":
    main()
