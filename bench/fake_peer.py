"""A fake Asterisk for the benchmarks: the tests' AMI peer (tests/fake_ami.py, replaying the
recorded bytes) in a process of its own. It answers each callee by its last digit (CASES, a
comma-separated case per digit 0-9), prints its port, and stops on SIGTERM.

    python bench/fake_peer.py CASES [--scale X] [--log FILE]

--scale: the recorded times between a call's events, times X (0: all at once).
--log: every Originate appended to FILE as "<unix time> <callee> <ChannelId>", and every
login to FILE.logins, as they arrive (a SIGKILL loses none already written).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from typing import Any

from fake_ami import FakeAMI


class ByLastDigit(dict):
    def __init__(self, cases: list[str]) -> None:
        super().__init__()
        self.cases = cases

    def get(self, number: str, default: Any = None) -> Any:
        return self.cases[int(number[-1])] if number[-1:].isdigit() else default


class LoggingPeer(FakeAMI):
    def __init__(self, log: str, **options: Any) -> None:
        super().__init__(**options)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self.log = os.open(log, flags)
        self.logins_log = os.open(f"{log}.logins", flags)

    async def _login(self, session: Any, action: Any) -> bool:
        logged_in = await super()._login(session, action)
        os.write(self.logins_log, b"login\n")
        return logged_in

    def _originate(self, session: Any, action: Any) -> bool:
        callee = (action.get("Channel") or "").partition("/")[2].partition("@")[0]
        os.write(self.log, f"{time.time():.6f} {callee} {action.get('ChannelId')}\n".encode())
        return super()._originate(session, action)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases")
    parser.add_argument("--scale", type=float, default=0.0)
    parser.add_argument("--log")
    args = parser.parse_args()
    options = {"time_scale": args.scale}
    peer = LoggingPeer(args.log, **options) if args.log else FakeAMI(**options)
    async with peer as fake:
        fake.cases = ByLastDigit(args.cases.split(","))
        print(fake.port, flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
