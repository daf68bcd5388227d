"""Whether the event loop keeps running while a call on it waits for something slow.

The slow thing is made to wait on purpose (a FIFO nobody writes, a socket that never answers,
a stopped process); a thread checks that the loop still runs a callback meanwhile, then lets
the slow thing go on. A call that blocked the loop shows as a callback that never ran, or ran
only once the slow thing had given up by itself.
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

    def in_thread(
        self,
        wait_until_blocked: Callable[[], None],
        release: Callable[[], None],
        still_blocked: Callable[[], bool] = lambda: True,
    ) -> threading.Thread:
        """A started thread that waits for the slow thing to be waited on, records whether
        the loop runs a callback while `still_blocked()`, then calls `release`."""

        def run() -> None:
            wait_until_blocked()
            ran = threading.Event()
            self.loop.call_soon_threadsafe(ran.set)
            self.answered = ran.wait(PATIENCE) and still_blocked()
            release()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread
