"""Stopping background tasks for sure."""

from __future__ import annotations

import asyncio

import structlog

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
