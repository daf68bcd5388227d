"""`campaign run`: a list of callees queued for one campaign and dialed from this process.

The list goes into the campaign's queue in Redis (outbound/queue.py); a callee queued before
is not queued again, so the same list run again resumes where the last run stopped and dials
nobody twice. A dialer in this process (outbound/dialer.py) then dials the campaign until it
has nothing left; `zvonok-agi dialer` processes running meanwhile dial it too. While Redis or
every AMI link is down, or the campaign is paused, the run waits; when the campaign may no
longer dial (finished, deleted, its caller ID taken away) it stops and says why. Ctrl-C: the
calls in flight end with their outcome, the callees not started go back to the queue.
"""

from __future__ import annotations

import asyncio
import csv
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import structlog
from redis.exceptions import RedisError

from .. import phone
from ..routing.model import Outcome
from ..tasks import LoopErrors, cancel_and_wait, run_every
from .dialer import Dialer
from .queue import Progress, split_callees

log = structlog.get_logger(__name__)

# How many refusal reasons the summary shows (the count is always exact).
REFUSALS_KEPT = 5
# Column names that hold the callee in a CSV with a header (compared in lower case).
CALLEE_COLUMNS = ("phone", "number", "callee")
# Seconds between two looks at the campaign's progress in Redis.
PROGRESS_EVERY = 0.5


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


# ---- the run ----------------------------------------------------------------------------------


@dataclass
class RunReport:
    campaign: str
    given: int = 0  # distinct callees in the list
    queued: int = 0  # queued by this run (the others were queued before)
    placed: int = 0  # Originates this process sent
    elapsed: float = 0.0
    progress: Progress | None = None  # the campaign's, at the end
    refusals: dict[str, str] = field(default_factory=dict)  # some refused callees, why
    stopped_because: str | None = None  # the campaign may no longer dial
    interrupted: bool = False  # stopped with callees left to dial


async def run_campaign(
    dialer: Dialer,
    campaign: str,
    callees: Iterable[str],
    stop: asyncio.Event,
    *,
    region: str = phone.DEFAULT_REGION,
    cps: float | None = None,
    concurrency: int | None = None,
    progress: Callable[[Progress, str | None], None] | None = None,
) -> RunReport:
    """Queue `callees` for `campaign` and dial until it has nothing left or `stop` is set.
    Raises DialRefused, before queueing anything, when the campaign may not dial at all."""
    dialer.hosts[0].originator.check_campaign(campaign)
    started = time.monotonic()
    numbers, invalid = split_callees(callees, region)
    queue = dialer.queue
    await queue.configure(campaign, cps=cps, concurrency=concurrency)
    report = RunReport(campaign, given=len(numbers) + len(invalid))
    report.queued = await queue.enqueue(campaign, numbers, invalid)
    log.info("campaign run started", campaign=campaign, callees=report.given, queued=report.queued)

    shown = Progress(campaign)

    async def show() -> None:
        nonlocal shown
        if progress is None:
            return
        why = dialer.why_idle(campaign)
        try:
            shown = await queue.progress(campaign)
        except (RedisError, OSError):  # the dialer says so in its log
            why = "store unavailable"
        progress(shown, why)

    watcher = asyncio.create_task(
        run_every(PROGRESS_EVERY, show, LoopErrors("campaign-progress")), name="run-progress"
    )
    try:
        await dialer.run(stop, until_done=True)
    finally:
        await cancel_and_wait(watcher)
    report.elapsed = time.monotonic() - started
    report.placed = dialer.placed
    report.stopped_because = dialer.stopped_because
    report.progress = await queue.progress(campaign)
    report.interrupted = not report.progress.finished
    if report.progress.refused or report.progress.invalid:
        report.refusals = await queue.refusals(campaign, REFUSALS_KEPT)
    if progress is not None:
        progress(report.progress, None)
    log.info(
        "campaign run ended",
        campaign=campaign,
        placed=report.placed,
        waiting=report.progress.waiting,
        **{outcome.value: n for outcome, n in report.progress.outcomes.items()},
    )
    return report


# ---- showing it -------------------------------------------------------------------------------


def format_summary(report: RunReport) -> str:
    """A short table for a human, printed when the run ends."""
    r = report
    p = r.progress or Progress(r.campaign)
    lines = [f"campaign {r.campaign}: {r.given} callees in the list, {r.elapsed:.1f} s"]
    lines.append(f"  queued    {r.queued:6}  ({r.given - r.queued - p.invalid} queued before)")
    lines.append(f"  placed    {r.placed:6}  (by this run; the campaign's outcomes:)")
    for outcome in Outcome:
        if p.outcomes.get(outcome):
            lines.append(f"    {outcome.value:<12}{p.outcomes[outcome]:6}")
    refused = p.refused + p.invalid
    lines.append(f"  refused   {refused:6}")
    lines += [f"    {callee}: {why}" for callee, why in r.refusals.items()]
    if refused > len(r.refusals):
        lines.append(f"    ... and {refused - len(r.refusals)} more")
    if p.dialing:
        lines.append(f"  dialing   {p.dialing:6}  (by other dialers)")
    if r.stopped_because:
        lines.append(f"  stopped: {r.stopped_because}")
    if r.interrupted:
        lines.append(f"  interrupted: {p.waiting} not dialed yet; run again to resume")
    return "\n".join(lines)


def render_progress(progress: Progress, paused: str | None = None, width: int = 24) -> str:
    total = progress.queued + progress.invalid
    done = progress.done + progress.refused + progress.invalid
    filled = width * done // total if total else width
    counts = " ".join(f"{o.value} {n}" for o, n in progress.outcomes.items() if n)
    line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  dialing {progress.dialing}"
    if counts:
        line += f"  {counts}"
    if paused:
        line += f"  PAUSED: {paused}"
    return line


class TerminalProgress:
    """A progress callback for `run_campaign`: on a terminal, a one-line bar on `stream`
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

    def __call__(self, progress: Progress, paused: str | None = None) -> None:
        now = self.clock()
        # A pause and the end are shown at once, the rest at most every REDRAW / interval s.
        done = progress.done + progress.refused + progress.invalid
        final = progress.finished and done != self._shown_done
        changed = paused != self._paused or final
        self._paused = paused
        if now - self._last < (self.REDRAW if self.tty else self.interval) and not changed:
            return
        self._last, self._shown_done = now, done
        if self.tty:
            line = render_progress(progress, paused, self.BAR)
            self.stream.write("\r" + line.ljust(self._width))
            self.stream.flush()
            self._width = len(line)
        else:
            log.info(
                "campaign progress",
                campaign=progress.campaign,
                done=done,
                total=progress.queued + progress.invalid,
                dialing=progress.dialing,
                paused=paused,
                **{outcome.value: n for outcome, n in progress.outcomes.items()},
            )

    def close(self) -> None:
        """End the bar's line, so that what is printed next starts on a fresh one."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
