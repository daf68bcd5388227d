"""The callback history: outbound attempts per (DID, callee), kept for the callback window.

Layout (prefix `zv:` by default):
  hist:<did>:<callee>  hash, one per pair; for each attempt <id>:
      <id>    JSON {campaign, account, at}
      <id>:o  outcome
      <id>:c  callbacks routed back to the campaign
  attempt:<id>  the hist key of an attempt, to settle its outcome by id
  last:<callee>  the number the latest outbound call to this callee showed
  cpm:<did>:<minute>  calls placed from a number in one minute (for the per-number cap)

One inbound decision reads one hash (HGETALL: one round trip). Claiming the first callback is a
Lua script, so that of two simultaneous callbacks at most one wins.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from ..routing.model import Attempt, Outcome

# Writes the attempt, drops those older than the window, and keeps the hash alive for a window.
RECORD = """
local now, window = tonumber(ARGV[4]), tonumber(ARGV[5])
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local name = fields[i]
  if not string.find(name, ':', 1, true) then
    local ok, record = pcall(cjson.decode, fields[i + 1])
    if not ok or type(record) ~= 'table' or tonumber(record.at) == nil
        or tonumber(record.at) < now - window then
      redis.call('HDEL', KEYS[1], name, name .. ':o', name .. ':c')
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[1] .. ':o', ARGV[3], ARGV[1] .. ':c', '0')
local ttl = math.ceil(window)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[2], KEYS[1], 'EX', ttl)
return 1
"""

# An outbound call about to be placed: within the caller ID's calls-per-minute cap (a
# negative cap: none), count it, remember the number this callee was shown, and record the
# attempt; all or nothing. 0: the number is at its cap, nothing written.
DIAL = (
    """
local cap = tonumber(ARGV[6])
if cap >= 0 and tonumber(redis.call('GET', KEYS[3]) or '0') >= cap then return 0 end
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], 120)
redis.call('SET', KEYS[4], ARGV[7], 'EX', math.ceil(tonumber(ARGV[5])))
"""
    + RECORD
)

# 1: claimed; 0: already claimed or answered; -1: no such attempt.
CLAIM = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
if tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. ':c') or '0') > 0 then return 0 end
if redis.call('HGET', KEYS[1], ARGV[1] .. ':o') == 'answered' then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':c', 1)
return 1
"""

# Sets the outcome of an attempt found by id; 0 when it is gone (expired or never recorded).
SETTLE = """
local hist = redis.call('GET', KEYS[1])
if not hist or redis.call('HEXISTS', hist, ARGV[1]) == 0 then return 0 end
redis.call('HSET', hist, ARGV[1] .. ':o', ARGV[2])
return 1
"""


class CallbackHistory:
    def __init__(self, redis: aioredis.Redis, prefix: str = "zv:", window: float = 7 * 86400.0):
        self.redis = redis
        self.prefix = prefix
        self.window = window
        self._record = redis.register_script(RECORD)
        self._claim = redis.register_script(CLAIM)
        self._settle = redis.register_script(SETTLE)
        self._dial = redis.register_script(DIAL)

    @staticmethod
    def _record_json(attempt: Attempt) -> str:
        return json.dumps(
            {"campaign": attempt.campaign, "account": attempt.account, "at": attempt.at},
            separators=(",", ":"),
        )

    def key(self, did: str, callee: str) -> str:
        return f"{self.prefix}hist:{did}:{callee}"

    async def record(self, attempt: Attempt, now: float) -> None:
        record = self._record_json(attempt)
        await self._record(
            keys=[self.key(attempt.did, attempt.callee), f"{self.prefix}attempt:{attempt.id}"],
            args=[attempt.id, record, attempt.outcome.value, now, self.window],
        )
        if attempt.callbacks:
            await self.redis.hset(
                self.key(attempt.did, attempt.callee), f"{attempt.id}:c", attempt.callbacks
            )

    async def dial_context(
        self, callee: str, dids: list[str], now: float
    ) -> tuple[str | None, dict[str, int]]:
        """What the caller-ID choice needs, in one round trip: the number the previous call
        to `callee` showed, and this minute's calls from each of `dids`."""
        minute = int(now // 60)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(f"{self.prefix}last:{callee}")
            if dids:
                pipe.mget([f"{self.prefix}cpm:{did}:{minute}" for did in dids])
            replies = await pipe.execute()
        previous = replies[0].decode() if replies[0] else None
        counts = replies[1] if dids else []
        return previous, {did: int(c) for did, c in zip(dids, counts, strict=True) if c}

    async def record_dial(self, attempt: Attempt, now: float, cap: int | None) -> bool:
        """Record an attempt about to be dialed; False (nothing written) when its number
        already has `cap` calls this minute."""
        minute = int(now // 60)
        record = self._record_json(attempt)
        result = await self._dial(
            keys=[
                self.key(attempt.did, attempt.callee),
                f"{self.prefix}attempt:{attempt.id}",
                f"{self.prefix}cpm:{attempt.did}:{minute}",
                f"{self.prefix}last:{attempt.callee}",
            ],
            args=[
                attempt.id,
                record,
                attempt.outcome.value,
                now,
                self.window,
                -1 if cap is None else cap,
                attempt.did,
            ],
        )
        return int(result) == 1

    async def attempts(self, did: str, callee: str) -> list[Attempt]:
        """Every attempt kept for this pair, in no particular order."""
        raw = await self.redis.hgetall(self.key(did, callee))
        return parse_attempts(did, callee, raw)

    async def claim(self, attempt: Attempt) -> bool:
        """Atomically count a callback routed to the attempt's campaign; True for the first."""
        result = await self._claim(keys=[self.key(attempt.did, attempt.callee)], args=[attempt.id])
        return int(result) == 1

    async def settle(self, attempt_id: str, outcome: Outcome) -> bool:
        result = await self._settle(
            keys=[f"{self.prefix}attempt:{attempt_id}"], args=[attempt_id, outcome.value]
        )
        return int(result) == 1


def parse_attempts(did: str, callee: str, raw: dict) -> list[Attempt]:
    fields = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    attempts = []
    for name, value in fields.items():
        if ":" in name:
            continue
        try:
            record = json.loads(value)
            attempts.append(
                Attempt(
                    id=name,
                    campaign=str(record["campaign"]),
                    account=str(record["account"]),
                    did=did,
                    callee=callee,
                    at=float(record["at"]),
                    outcome=Outcome(fields.get(f"{name}:o", Outcome.PENDING)),
                    callbacks=int(fields.get(f"{name}:c", 0)),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue  # one bad record must not hide the others
    return attempts
