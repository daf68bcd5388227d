"""Background tasks: stopping them for sure, and loops that ride out a failed step."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import structlog
from redis.exceptions import RedisError

from .metrics import METRICS

log = structlog.get_logger(__name__)

RECANCEL_AFTER = 0.5


def cancel_requested() -> bool:
    """Whether the running task was asked to stop, even if the CancelledError never arrived."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel `tasks` and wait until every one has ended.

    A task that runs on is cancelled again every RECANCEL_AFTER seconds: redis-py now and then
    swallows a cancellation that meets a command in flight (the command just completes, or
    fails as a connection error; redis/redis-py#2028), and a loop that rides out store errors
    would otherwise run forever, and its owner never stop.
    Not `with suppress(CancelledError): await task`: that would also swallow a cancellation
    aimed at the caller, which then keeps running.
    """
    pending = {task for task in tasks if task is not None and not task.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER)
        for task in pending:
            log.warning("task ignored a cancellation; cancelling it again", task=task.get_name())
            task.cancel()
    for task in tasks:
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("background task failed", task=task.get_name(), error=repr(task.exception()))


class LoopErrors:
    """What a background loop does with a step that failed: count it in
    `zvonok_background_errors_total{loop}`, log it (the first at once, then at most one line
    every `log_every` seconds, saying how many went unlogged), and say when it works again.

    `expected` errors (a store or a peer away) are warnings; anything else is an error with
    its traceback, as it is a defect to fix.
    """

    def __init__(
        self,
        loop: str,
        *,
        expected: tuple[type[BaseException], ...] = (RedisError, OSError),
        log_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loop = loop
        self.expected = expected
        self.log_every = log_every
        self.clock = clock
        self.failures = 0  # since the last success
        self._unlogged = 0
        self._logged_at = -math.inf
        self._said_failing = False

    def failed(self, error: BaseException, **context: object) -> None:
        METRICS.background_error(self.loop)
        self.failures += 1
        now = self.clock()
        if now - self._logged_at < self.log_every:
            self._unlogged += 1
            return
        fields = dict(context, loop=self.loop, error=repr(error), unlogged=self._unlogged)
        if isinstance(error, self.expected):
            log.warning("background loop step failed; going on", **fields)
        else:
            log.error("background loop step failed; going on", exc_info=error, **fields)
        self._logged_at, self._unlogged, self._said_failing = now, 0, True

    def succeeded(self) -> None:
        # Said only after a failure that was logged: a flapping loop stays within the limit.
        if self._said_failing:
            log.info("background loop working again", loop=self.loop, failures=self.failures)
            self._said_failing = False
        self.failures = 0


async def run_every(
    interval: float,
    step: Callable[[], Awaitable[object]],
    errors: LoopErrors,
    *,
    max_backoff: float | None = None,
) -> None:
    """Run `step` every `interval` seconds until cancelled. A step that fails is reported to
    `errors` and the loop goes on, waiting twice as long after each failure in a row (up to
    `max_backoff`, by default `interval`: no backoff)."""
    delay = interval
    while not cancel_requested():
        await asyncio.sleep(delay)
        try:
            await step()
        except Exception as exc:
            if cancel_requested():  # the cancellation came back as a store error
                return
            errors.failed(exc)
            delay = min(delay * 2, max(max_backoff or interval, interval))
        else:
            errors.succeeded()
            delay = interval
