"""Dialing a list of callees for one campaign: paced, bounded, resumable, stoppable.

Each callee goes through the originator in two steps: `prepare()` records the attempt, the
callee is then appended to the run's journal, and only then is `place()` sent. So a run that
is interrupted (SIGINT, crash) and started again with the same journal never dials anyone
twice; the price is that a crash between the journal write and the Originate loses that one
callee, which is the safe side. Once the Originate is known not to have left (the AMI link
was down), the callee is struck out of the journal again and goes back in the queue: a run
stopped before its redial leaves it to the next run.

While Redis is down no attempt can be recorded, so no call is placed: the run pauses, retries
the same callee every STORE_RETRY seconds and resumes when the store is back. While the AMI
link is down the run waits for the client to reconnect; while the campaign is paused it waits
for it to run again. When the campaign itself may no longer dial (finished, deleted, its
caller ID taken away), the run stops and says why. Anything else that goes wrong with one
callee (a defect) is logged and counted, and that callee is refused; the run goes on.
"""

from __future__ import annotations

import asyncio
import csv
import math
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import structlog

from .. import phone
from ..routing.callerid import CallerId, PoolAtCapacity
from ..routing.model import Attempt, Outcome
from ..tasks import LoopErrors
from .originator import (
    CampaignPaused,
    DialRefused,
    DialResult,
    Originator,
    StoreUnavailable,
)

log = structlog.get_logger(__name__)

# Seconds between tries of the same callee while Redis is down.
STORE_RETRY = 0.5
# Seconds between tries while every pool number is at its per-minute cap.
POOL_RETRY = 1.0
# How many refusal reasons the summary keeps (the count is always exact).
REFUSALS_KEPT = 5
# Column names that hold the callee in a CSV with a header (compared in lower case).
CALLEE_COLUMNS = ("phone", "number", "callee")

RESUMED = {
    "store unavailable": "store back",
    "AMI link down": "AMI link back",
    "campaign paused": "campaign running",
}


# ---- the list of callees ----------------------------------------------------------------------


def read_callees(path: str | Path, region: str = phone.DEFAULT_REGION) -> list[str]:
    """The callees of a CSV file, raw as written (the originator refuses bad numbers).

    The column is the one named phone, number or callee in a header row, else the first one.
    Blank lines and `#` comments are skipped; a number listed twice is kept once.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: Excel writes a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the callee list {path}: {exc}") from exc
    lines = [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise ValueError(f"{path}: no callees (the file has no data rows)")
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(lines[0], ",;\t")
    except csv.Error:
        dialect = csv.excel  # one column: no delimiter to find
    rows = list(csv.reader(lines, dialect))
    header = [cell.strip().lower() for cell in rows[0]]
    named = next((name for name in CALLEE_COLUMNS if name in header), None)
    column = 0 if named is None else header.index(named)
    if named is not None:
        rows = rows[1:]
    callees, seen = [], set()
    for row in rows:
        raw = row[column].strip() if column < len(row) else ""
        key = phone.normalize(raw, region) or raw
        if raw and key not in seen:
            seen.add(key)
            callees.append(raw)
    if not any(phone.normalize(raw, region) for raw in callees):
        where = (
            f"the {named!r} column"
            if named
            else f"no header names a {'/'.join(CALLEE_COLUMNS)} column and the first column"
        )
        raise ValueError(f"{path}: no usable column: {where} holds no phone number")
    return callees


# ---- the journal of callees already dialed ----------------------------------------------------


def journal_path(state_dir: str | Path, campaign_id: str, list_path: str | Path) -> Path:
    """Where a run of `campaign_id` over `list_path` keeps its journal by default."""
    return Path(state_dir) / f"{campaign_id}-{Path(list_path).stem}.journal"


class Journal:
    """An append-only file of callees already dialed, one E.164 number a line; a line
    `-NUMBER` strikes out the one before it (its Originate never left)."""

    STRUCK = "-"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def done(self) -> set[str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return set()
        done: set[str] = set()
        for line in text.splitlines():
            callee = line.strip()
            if callee.startswith(self.STRUCK):
                done.discard(callee.removeprefix(self.STRUCK))
            elif callee:
                done.add(callee)
        return done

    def append(self, callee: str) -> None:
        """Write `callee` durably (fsync): it must survive a crash right after."""
        self._write(callee)

    def strike(self, callee: str) -> None:
        """Take `callee` back out: it was not dialed after all."""
        self._write(self.STRUCK + callee)

    def _write(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(line + "\n")
            file.flush()
            os.fsync(file.fileno())


# ---- pacing -----------------------------------------------------------------------------------


class RateLimiter:
    """Calls started per second, evenly spaced: one slot every 1/rate s, handed out in the order
    asked (fair), and never more than one at once after an idle spell (no burst).

    It holds no event-loop state, so one instance may be shared by every runner in the process.
    """

    def __init__(self, rate_per_second: float) -> None:
        if not rate_per_second > 0:
            raise ValueError("the rate must be positive")
        self.rate = rate_per_second
        self.interval = 1.0 / rate_per_second
        self._next = -math.inf  # when the next slot is free (time.monotonic)

    async def acquire(self) -> None:
        await acquire_all([self])


async def acquire_all(limiters: Sequence[RateLimiter]) -> None:
    """Take the first slot that is free in every one of `limiters` at once, and wait for it.

    Reserving the same instant in all of them keeps each one exact, where taking them one
    after the other would let the wait in the second one bunch up starts of the first.
    """
    now = time.monotonic()  # the event loop's clock too
    slot = max([now, *(limiter._next for limiter in limiters)])
    before = [limiter._next for limiter in limiters]
    for limiter in limiters:
        limiter._next = slot + limiter.interval
    try:
        await asyncio.sleep(slot - now)
    except asyncio.CancelledError:
        # Give the slot back where nobody has queued behind it, so it is not lost.
        for limiter, previous in zip(limiters, before, strict=True):
            if limiter._next == slot + limiter.interval:
                limiter._next = previous
        raise


_TRUNKS: dict[str, RateLimiter] = {}


def trunk_of(channel: str) -> str:
    """The trunk an Originate channel template goes out on: `PJSIP/{callee}@carrier` ->
    `PJSIP/carrier`; a template without `@` is its own trunk."""
    tech, _, rest = channel.partition("/")
    endpoint = rest.partition("@")[2]
    return f"{tech}/{endpoint}" if endpoint else channel


def trunk_limiter(channel: str, rate: float) -> RateLimiter:
    """The one limiter of the trunk that `channel` (the Originate channel template) goes out
    on, shared by every runner in this process. The rate is the trunk's: a second caller
    asking for another rate is a configuration mistake (ValueError)."""
    key = trunk_of(channel)
    limiter = _TRUNKS.get(key)
    if limiter is None:
        limiter = _TRUNKS[key] = RateLimiter(rate)
    elif limiter.rate != rate:
        raise ValueError(f"trunk {key} already limited to {limiter.rate} calls/s, not {rate}")
    return limiter


# ---- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunProgress:
    total: int
    done: int  # skipped + refused + placed (settled)
    skipped: int
    placed: int
    refused: int
    in_flight: int
    outcomes: dict[Outcome, int]
    paused: str | None  # why the run is paused ("store unavailable", "AMI link down"), or None


@dataclass
class RunSummary:
    campaign: str
    total: int = 0  # distinct callees in the list
    skipped: int = 0  # dialed by an earlier run (in the journal)
    placed: int = 0
    refused: int = 0
    refusals: list[str] = field(default_factory=list)  # the first REFUSALS_KEPT reasons
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    paused_seconds: float = 0.0
    interrupted: bool = False
    remaining: int = 0  # not dialed because the run was stopped
    stopped_because: str | None = None  # the campaign may no longer dial
    elapsed: float = 0.0


class CampaignRunner:
    """Dials `callees` for one campaign: at most `concurrency` calls at once, at most
    `calls_per_second` started, and within the `trunk` limiter shared with other runs."""

    def __init__(
        self,
        originator: Originator,
        campaign_id: str,
        callees: Iterable[str],
        journal: Journal,
        *,
        calls_per_second: float,
        concurrency: int,
        trunk: RateLimiter,
        progress: Callable[[RunProgress], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.originator = originator
        self.campaign_id = campaign_id
        self.callees = list(callees)
        self.journal = journal
        self.concurrency = concurrency
        self.limiters = [RateLimiter(calls_per_second), trunk]
        self.progress = progress
        self.summary = RunSummary(campaign_id)
        self._calls: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._paused: str | None = None
        self._paused_since = 0.0
        self._pool_full = False
        self._errors = LoopErrors("campaign-run", expected=())

    async def run(self, stop: asyncio.Event) -> RunSummary:
        """Dial until the list is done or `stop` is set; calls in flight then end normally.
        Raises DialRefused, before any call, when the campaign may not dial at all."""
        self.originator.check_campaign(self.campaign_id)
        started = time.monotonic()
        queue = self._to_dial(await asyncio.to_thread(self.journal.done))
        log.info(
            "campaign run started",
            campaign=self.campaign_id,
            callees=self.summary.total,
            already_dialed=self.summary.skipped,
        )
        self._report()
        stopper = asyncio.create_task(stop.wait(), name="runner-stop")
        try:
            await self._dial(queue, stop, stopper)
        except asyncio.CancelledError:
            for call in self._calls:  # run() itself cancelled: do not wait for outcomes
                call.cancel()
            raise
        finally:
            stopper.cancel()
            if self._calls:
                await asyncio.wait(self._calls)  # calls in flight end with their outcome
            self._end_pause()
        self.summary.remaining = len(queue)
        self.summary.interrupted = bool(queue)
        self.summary.elapsed = time.monotonic() - started
        log.info(
            "campaign run ended",
            campaign=self.campaign_id,
            placed=self.summary.placed,
            refused=self.summary.refused,
            skipped=self.summary.skipped,
            remaining=self.summary.remaining,
            **{outcome.value: n for outcome, n in self.summary.outcomes.items()},
        )
        return self.summary

    async def _dial(
        self, queue: deque[str], stop: asyncio.Event, stopper: asyncio.Task[object]
    ) -> None:
        """Launch a call for each callee of `queue` until it is empty or `stop` is set."""
        while not stop.is_set():
            if queue and len(self._calls) < self.concurrency:
                callee = queue.popleft()
                try:
                    prepared = await self._prepare(callee, stopper)
                except DialRefused as exc:
                    if self._campaign_refused():
                        queue.appendleft(callee)
                        return
                    self._refuse(callee, str(exc))
                    continue
                except Exception as exc:  # a defect: not journaled, a later run tries again
                    self._errors.failed(exc, campaign=self.campaign_id, callee=callee)
                    self._refuse(callee, f"not dialed: {exc!r}")
                    continue
                if prepared is None:  # stopped while waiting
                    queue.appendleft(callee)
                    return
                attempt, caller_id = prepared
                # Journaled before the Originate: a crash in between never redials.
                await asyncio.to_thread(self.journal.append, attempt.callee)
                # Paced last, right before the Originate, so the rates hold at the trunk.
                # Not cut short by a stop: the attempt is recorded, the wait is short.
                await acquire_all(self.limiters)
                self._in_flight += 1
                call = asyncio.create_task(self._place(attempt, caller_id, queue))
                self._calls.add(call)
                call.add_done_callback(self._calls.discard)
                self._report()
            elif self._calls:
                await asyncio.wait({*self._calls, stopper}, return_when=asyncio.FIRST_COMPLETED)
            else:
                return

    def _to_dial(self, done: set[str]) -> deque[str]:
        """The callees still to dial: each number once, none already `done` (journaled)."""
        queue: deque[str] = deque()
        seen: set[str] = set()
        for raw in self.callees:
            key = phone.normalize(raw, self.originator.region) or raw.strip()
            if key in seen:
                continue
            seen.add(key)
            self.summary.total += 1
            if key in done:
                self.summary.skipped += 1
            else:
                queue.append(raw)
        return queue

    async def _prepare(
        self, callee: str, stopper: asyncio.Task[object]
    ) -> tuple[Attempt, CallerId] | None:
        """Record the attempt, riding out a store or link outage and a full pool; None if
        stopped meanwhile. Raises DialRefused for a callee that cannot be dialed."""
        ami = self.originator.ami
        while True:
            if not ami.connected:
                self._pause("AMI link down")
                if not await _unless_stopped(ami.wait_connected(), stopper):
                    return None
            try:
                prepared = await self.originator.prepare(self.campaign_id, callee)
            except PoolAtCapacity as exc:
                if not self._pool_full:
                    log.warning(
                        "pool at capacity: waiting", campaign=self.campaign_id, why=str(exc)
                    )
                self._pool_full = True
                delay = POOL_RETRY
            except StoreUnavailable as exc:
                self._pause("store unavailable", str(exc))
                delay = STORE_RETRY
            except CampaignPaused as exc:
                self._pause("campaign paused", str(exc))
                delay = POOL_RETRY
            else:
                self._pool_full = False
                self._resume()
                return prepared
            if not await _unless_stopped(asyncio.sleep(delay), stopper):
                return None

    async def _place(self, attempt: Attempt, caller_id: CallerId, queue: deque[str]) -> None:
        try:
            result = await self.originator.place(attempt, caller_id)
        except Exception as exc:  # the Originate may have gone out: counted, never retried
            self._errors.failed(exc, campaign=self.campaign_id, callee=attempt.callee)
            result = DialResult(attempt, caller_id, Outcome.FAILED, repr(exc))
        finally:
            self._in_flight -= 1
        if result.retry:
            # The link fell between prepare and send: nothing reached Asterisk, so this
            # callee goes back in the queue, and out of the journal for a run that resumes
            # (first: its redial journals it again).
            try:
                await asyncio.to_thread(self.journal.strike, attempt.callee)
            except OSError as exc:
                log.error(
                    "journal not updated: a resumed run would skip this callee",
                    callee=attempt.callee,
                    error=str(exc),
                )
            queue.append(attempt.callee)
            self._report()
            return
        if not result.dialed:
            self._refuse(attempt.callee, result.detail)
            return
        outcome = result.outcome
        self.summary.placed += 1
        self.summary.outcomes[outcome] += 1
        self._report()

    def _campaign_refused(self) -> bool:
        """Whether the campaign itself may no longer dial; if so the run is to stop."""
        try:
            self.originator.check_campaign(self.campaign_id)
        except DialRefused as exc:
            log.warning(
                "campaign can no longer dial: run stopped",
                campaign=self.campaign_id,
                reason=str(exc),
            )
            self.summary.stopped_because = str(exc)
            return True
        return False

    def _refuse(self, callee: str, reason: str) -> None:
        log.warning("callee refused", campaign=self.campaign_id, callee=callee, reason=reason)
        self.summary.refused += 1
        if len(self.summary.refusals) < REFUSALS_KEPT:
            self.summary.refusals.append(f"{callee}: {reason}")
        self._report()

    def _pause(self, reason: str, error: str = "") -> None:
        if self._paused == reason:
            return
        log.warning(f"{reason}: run paused", campaign=self.campaign_id, error=error or None)
        if self._paused is None:
            self._paused_since = time.monotonic()
        self._paused = reason
        self._report()

    def _resume(self) -> None:
        if self._paused is None:
            return
        log.info(f"{RESUMED[self._paused]}: run resumed", campaign=self.campaign_id)
        self._end_pause()

    def _end_pause(self) -> None:
        if self._paused is not None:
            self.summary.paused_seconds += time.monotonic() - self._paused_since
            self._paused = None
            self._report()

    def _report(self) -> None:
        if self.progress is None:
            return
        s = self.summary
        self.progress(
            RunProgress(
                total=s.total,
                done=s.skipped + s.refused + s.placed,
                skipped=s.skipped,
                placed=s.placed,
                refused=s.refused,
                in_flight=self._in_flight,
                outcomes=dict(s.outcomes),
                paused=self._paused,
            )
        )


async def _unless_stopped(awaitable: Awaitable[object], stopper: asyncio.Task[object]) -> bool:
    """Await `awaitable` unless `stopper` ends first (it is then cancelled); True if it ran
    to its end and the run is not stopped."""
    task = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
    if stopper.done():
        return False
    task.result()  # re-raise what it raised
    return True


# ---- showing it -------------------------------------------------------------------------------


def format_summary(summary: RunSummary) -> str:
    """A short table for a human, printed when the run ends."""
    s = summary
    lines = [f"campaign {s.campaign}: {s.total} callees, {s.elapsed:.1f} s"]
    lines.append(f"  placed    {s.placed:6}")
    for outcome in Outcome:
        if s.outcomes[outcome]:
            lines.append(f"    {outcome.value:<12}{s.outcomes[outcome]:6}")
    lines.append(f"  skipped   {s.skipped:6}  (dialed by an earlier run)")
    lines.append(f"  refused   {s.refused:6}")
    lines += [f"    {reason}" for reason in s.refusals]
    if s.refused > len(s.refusals):
        lines.append(f"    ... and {s.refused - len(s.refusals)} more (see the log)")
    if s.paused_seconds:
        lines.append(f"  paused    {s.paused_seconds:6.1f} s")
    if s.stopped_because:
        lines.append(f"  stopped: {s.stopped_because}")
    if s.interrupted:
        lines.append(f"  interrupted: {s.remaining} not dialed yet; run again to resume")
    return "\n".join(lines)


class TerminalProgress:
    """A progress callback for `CampaignRunner`: on a terminal, a one-line bar on `stream`
    redrawn in place; otherwise an info log line with the counters every `interval` s."""

    BAR = 24
    REDRAW = 0.1  # seconds between redraws on a terminal

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval
        self.clock = clock
        self._last = clock() if not self.tty else -math.inf
        self._paused: str | None = None
        self._shown_done = -1
        self._width = 0

    def __call__(self, progress: RunProgress) -> None:
        now = self.clock()
        # A pause and the end are shown at once, the rest at most every REDRAW / interval s.
        final = progress.done >= progress.total and progress.done != self._shown_done
        changed = progress.paused != self._paused or final
        self._paused = progress.paused
        if now - self._last < (self.REDRAW if self.tty else self.interval) and not changed:
            return
        self._last, self._shown_done = now, progress.done
        if self.tty:
            line = render_progress(progress, self.BAR)
            self.stream.write("\r" + line.ljust(self._width))
            self.stream.flush()
            self._width = len(line)
        else:
            log.info(
                "campaign progress",
                done=progress.done,
                total=progress.total,
                in_flight=progress.in_flight,
                paused=progress.paused,
                **{outcome.value: n for outcome, n in progress.outcomes.items()},
            )

    def close(self) -> None:
        """End the bar's line, so that what is printed next starts on a fresh one."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


def render_progress(progress: RunProgress, width: int = 24) -> str:
    filled = width * progress.done // progress.total if progress.total else width
    counts = " ".join(f"{o.value} {n}" for o, n in progress.outcomes.items() if n)
    line = (
        f"[{'#' * filled}{'.' * (width - filled)}] {progress.done}/{progress.total}"
        f"  in flight {progress.in_flight}"
    )
    if counts:
        line += f"  {counts}"
    if progress.paused:
        line += f"  PAUSED: {progress.paused}"
    return line
