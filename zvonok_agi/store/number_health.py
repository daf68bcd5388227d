"""Number health in Redis: each number's calls placed and answered over a sliding window, and
which pool numbers rest until when (the rule: routing/health.py). Every dialer process shares it.

Layout (prefix `zv:` by default; the part in braces is the Redis Cluster hash tag, so one
number's counts and its rest are one key, one slot):
  health:{<did>}  hash: p:<step> / a:<step>  calls placed / answered in that step of the window
      (the window in STEPS steps: a call counts for one window, give or take one step),
      rest  the time (epoch seconds) it rests until, while it rests
  health:events  stream: every rest and return (did, event, until, rate, median), the latest
      EVENTS_KEPT, for the control plane's audit log

A call counts once, when its outcome is first written (CallbackHistory.settle). Resting and
coming back are scripts on the number's key that say whether this call made the change: of
several dialers seeing the same thing, one writes the audit line and counts the metric. A
number that comes back starts its window afresh (its counts go with its rest).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..routing.health import Counts
from .connection import Client

STEPS = 24  # the window is kept in this many steps (an hour each in a day's window)
EVENTS_KEPT = 10_000

# KEYS: health:{<did>}. ARGV: step, answered (1/0), oldest step kept, seconds to keep the key.
COUNT = """
redis.call('HINCRBY', KEYS[1], 'p:' .. ARGV[1], 1)
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'a:' .. ARGV[1], 1) end
local oldest = tonumber(ARGV[3])
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  local step = tonumber(string.match(name, '^[pa]:(%d+)$'))
  if step and step < oldest then redis.call('HDEL', KEYS[1], name) end
end
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return 1
"""

# Rests a number unless it rests already: 1 if this call rested it.
# KEYS: health:{<did>}. ARGV: until, now, seconds to keep the key.
REST = """
if tonumber(redis.call('HGET', KEYS[1], 'rest') or '0') > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'rest', ARGV[1])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""

# Brings a number back once its rest is over, with a fresh window: 1 if this call did.
# KEYS: health:{<did>}. ARGV: now.
BACK = """
local rest = tonumber(redis.call('HGET', KEYS[1], 'rest') or '')
if rest == nil or rest > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class NumberHealth:
    """One number's counts over the window and, while it rests, until when."""

    counts: Counts
    rested_until: float | None = None


class NumberHealthStore:
    def __init__(self, redis: Client, prefix: str = "zv:", window: float = 86400.0) -> None:
        self.redis = redis
        self.prefix = prefix
        self.window = window
        self.step = window / STEPS
        self._count = redis.register_script(COUNT)
        self._rest = redis.register_script(REST)
        self._back = redis.register_script(BACK)

    def key(self, did: str) -> str:
        return f"{self.prefix}health:{{{did}}}"

    @property
    def events_key(self) -> str:
        return f"{self.prefix}health:events"

    def _steps(self, now: float) -> tuple[int, int]:
        """This moment's step and the oldest step still in the window."""
        current = int(now // self.step)
        return current, current - STEPS + 1

    async def count(self, did: str, answered: bool, at: float) -> None:
        """One call placed from `did` at `at` (answered or not)."""
        step, oldest = self._steps(at)
        await self._count(
            keys=[self.key(did)], args=[step, 1 if answered else 0, oldest, self._keep()]
        )

    async def read(self, dids: Iterable[str], now: float) -> dict[str, NumberHealth]:
        """Each number's health now (numbers with nothing kept get zero counts)."""
        dids = list(dids)
        if not dids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for did in dids:
                pipe.hgetall(self.key(did))
            raw = await pipe.execute()
        _, oldest = self._steps(now)
        return {did: _parse(fields, oldest) for did, fields in zip(dids, raw, strict=True)}

    async def rest(self, did: str, until: float, now: float) -> bool:
        """Rest `did` until `until`; False if it rests already (another dialer was first)."""
        keep = max(self._keep(), math.ceil(until - now))
        return bool(await self._rest(keys=[self.key(did)], args=[until, now, keep]))

    async def bring_back(self, did: str, now: float) -> bool:
        """End `did`'s rest if it is over, clearing its window; False if another did it."""
        return bool(await self._back(keys=[self.key(did)], args=[now]))

    async def log_event(self, did: str, event: str, at: float, **detail: object) -> None:
        fields = {"did": did, "event": event, "at": at}
        fields.update({name: "" if value is None else value for name, value in detail.items()})
        await self.redis.xadd(self.events_key, fields, maxlen=EVENTS_KEPT, approximate=True)

    async def events(self, after: str = "0-0", count: int = 100) -> list[tuple[str, dict]]:
        """Rest and return events after the stream id `after`, oldest first."""
        entries = await self.redis.xrange(self.events_key, min=f"({after}", count=count)
        return [
            (_text(entry_id), {_text(k): _text(v) for k, v in fields.items()})
            for entry_id, fields in entries
        ]

    def _keep(self) -> int:
        return math.ceil(self.window + self.step)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse(fields: dict, oldest: int) -> NumberHealth:
    placed = answered = 0
    rest = None
    for name, value in fields.items():
        name = _text(name)
        if name == "rest":
            rest = float(value)
            continue
        kind, _, step = name.partition(":")
        if not step.isdigit() or int(step) < oldest:
            continue
        if kind == "p":
            placed += int(value)
        elif kind == "a":
            answered += int(value)
    return NumberHealth(Counts(placed, min(answered, placed)), rest)
