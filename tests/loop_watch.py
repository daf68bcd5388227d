"""Whether the event loop keeps running while a call on it waits for something slow.

The slow thing is made to wait on purpose (a FIFO nobody writes, a socket that never answers,
a stopped process); a thread checks that the loop still runs a callback meanwhile, then lets
the slow thing go on. A call that blocked the loop shows as a callback that never ran.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

# Only to end the wait when the loop is blocked: a loop that runs answers in microseconds.
PATIENCE = 5.0


class LoopWatch:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.answered: bool | None = None

    def check_then(self, release: Callable[[], None]) -> None:
        """From another thread: record whether the loop runs a callback, then `release`."""
        ran = threading.Event()
        self.loop.call_soon_threadsafe(ran.set)
        self.answered = ran.wait(PATIENCE)
        release()

    def in_thread(
        self, wait_until_blocked: Callable[[], None], release: Callable[[], None]
    ) -> threading.Thread:
        """A started thread that waits for the slow thing to be waited on, then checks."""

        def run() -> None:
            wait_until_blocked()
            self.check_then(release)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread
