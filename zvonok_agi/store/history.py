"""The callback history: outbound attempts per (DID, callee), kept for the callback window.

Layout (prefix `zv:` by default):
  hist:<did>:<callee>  hash, one per pair; for each attempt <id>:
      <id>    JSON {campaign, account, at}
      <id>:o  outcome
      <id>:c  callbacks routed back to the campaign
      <id>:k  the token of the call that holds the first-callback claim
  attempt:<id>  the hist key of an attempt, to settle its outcome by id
  last:<callee>  the number the latest outbound call to this callee showed
  cpm:<did>:<minute>  calls placed from a number in one minute (for the per-number cap)
  dialed:{<callee>}  hash, campaign -> "<attempt id> <did> <via>": the call a campaign that
      dials each callee once placed to this callee, and the Asterisk host it went through
      (written with the attempt, in the same step)

Recording an outbound attempt is one Lua script too: it reads the callee's last number and the
numbers' counts and writes the attempt in the same step, so two calls to one callee at once
never show the same pool number.

One inbound decision reads one hash (HGETALL: one round trip). Claiming the first callback is a
Lua script, so that of two simultaneous callbacks at most one wins. A claim whose route never
reached Asterisk is given back by the call that made it (its token), once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import redis.asyncio as aioredis

from ..routing.model import Attempt, Outcome

# Writes an attempt, drops those older than the window, and keeps the hash alive for a window.
_RECORD_FUNCTION = """
local function record(hist, attempt_key, id, json, outcome, now, window)
  local fields = redis.call('HGETALL', hist)
  for i = 1, #fields, 2 do
    local name = fields[i]
    if not string.find(name, ':', 1, true) then
      local ok, record = pcall(cjson.decode, fields[i + 1])
      if not ok or type(record) ~= 'table' or tonumber(record.at) == nil
          or tonumber(record.at) < now - window then
        redis.call('HDEL', hist, name, name .. ':o', name .. ':c', name .. ':k')
      end
    end
  end
  redis.call('HSET', hist, id, json, id .. ':o', outcome, id .. ':c', '0')
  local ttl = math.ceil(window)
  redis.call('EXPIRE', hist, ttl)
  redis.call('SET', attempt_key, hist, 'EX', ttl)
end
"""

RECORD = (
    _RECORD_FUNCTION
    + """
record(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
return 1
"""
)

# An outbound call about to be placed, in one round trip and all or nothing: the first
# candidate number that is not the one this callee was shown last (when the plan says so) and
# is under its calls-per-minute cap (a negative cap: none) is counted, remembered as the
# callee's last number, and the attempt is recorded from it. With a campaign that dials each
# callee once, the call it placed to this callee is remembered too, and if there is one
# already nothing is written. Returns {chosen or '', previous or '', that call or ''}. The
# rule is routing.callerid.pick, which the tests hold this script to.
# KEYS: last:<callee>, attempt:<id>, dialed:{<callee>}, then per candidate cpm:<did>:<minute>
#       and hist:<did>:<callee>
# ARGV: id, record JSON, outcome, now, window, cap, avoid previous (1/0), campaign dialing each
#       callee once ('' for none), the host its call goes through, candidates...
DIAL = (
    _RECORD_FUNCTION
    + """
local now, window = tonumber(ARGV[4]), tonumber(ARGV[5])
local cap, avoid, once = tonumber(ARGV[6]), ARGV[7] == '1', ARGV[8]
local previous = redis.call('GET', KEYS[1])
if once ~= '' then
  local placed = redis.call('HGET', KEYS[3], once)
  if placed then return {'', previous or '', placed} end
end
for i = 10, #ARGV do
  local did = ARGV[i]
  local cpm, hist = KEYS[2 * (i - 9) + 2], KEYS[2 * (i - 9) + 3]
  if not (avoid and did == previous)
      and (cap < 0 or tonumber(redis.call('GET', cpm) or '0') < cap) then
    redis.call('INCR', cpm)
    redis.call('EXPIRE', cpm, 120)
    redis.call('SET', KEYS[1], did, 'EX', math.ceil(window))
    record(hist, KEYS[2], ARGV[1], ARGV[2], ARGV[3], now, window)
    if once ~= '' then
      redis.call('HSET', KEYS[3], once, ARGV[1] .. ' ' .. did .. ' ' .. ARGV[9])
      redis.call('EXPIRE', KEYS[3], math.ceil(window))
    end
    return {did, previous or '', ''}
  end
end
return {'', previous or '', ''}
"""
)

# Takes back a dial that never reached Asterisk: the attempt, its count against the cap, the
# callee's last number (unless a later call has changed it since) and the campaign's call to
# this callee (if it is this one).
# KEYS: last:<callee>, attempt:<id>, cpm:<did>:<minute>, hist:<did>:<callee>, dialed:{<callee>}
# ARGV: id, did, previous ('' for none), window, campaign
UNDIAL = """
local mark = redis.call('HGET', KEYS[5], ARGV[5])
if mark and string.match(mark, '^%S+') == ARGV[1] then redis.call('HDEL', KEYS[5], ARGV[5]) end
if redis.call('GET', KEYS[1]) == ARGV[2] then
  if ARGV[3] == '' then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], ARGV[3], 'EX', math.ceil(tonumber(ARGV[4])))
  end
end
if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end
redis.call('HDEL', KEYS[4], ARGV[1], ARGV[1] .. ':o', ARGV[1] .. ':c', ARGV[1] .. ':k')
redis.call('DEL', KEYS[2])
return 1
"""

# 1: claimed; 0: already claimed or answered; -1: no such attempt. ARGV: id, the call's token.
CLAIM = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
if tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. ':c') or '0') > 0 then return 0 end
if redis.call('HGET', KEYS[1], ARGV[1] .. ':o') == 'answered' then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':c', 1)
redis.call('HSET', KEYS[1], ARGV[1] .. ':k', ARGV[2])
return 1
"""

# Undoes the claim made with this token, and only it, once: 1 if it did, else 0.
RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1] .. ':k') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1] .. ':k')
if tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. ':c') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':c', -1)
end
return 1
"""

# Sets the outcome of an attempt found by id; 0 when it is gone (expired or never recorded).
SETTLE = """
local hist = redis.call('GET', KEYS[1])
if not hist or redis.call('HEXISTS', hist, ARGV[1]) == 0 then return 0 end
redis.call('HSET', hist, ARGV[1] .. ':o', ARGV[2])
return 1
"""


class AlreadyDialed(Exception):
    """The campaign, which dials each callee once, has placed a call to this one already."""

    def __init__(self, campaign: str, callee: str, mark: str) -> None:
        self.attempt_id, self.did, self.via = (mark.split(" ", 2) + ["", ""])[:3]
        super().__init__(
            f"campaign {campaign} has dialed {callee} already (attempt {self.attempt_id})"
        )


class CallbackHistory:
    def __init__(self, redis: aioredis.Redis, prefix: str = "zv:", window: float = 7 * 86400.0):
        self.redis = redis
        self.prefix = prefix
        self.window = window
        self._record = redis.register_script(RECORD)
        self._claim = redis.register_script(CLAIM)
        self._release = redis.register_script(RELEASE)
        self._settle = redis.register_script(SETTLE)
        self._dial = redis.register_script(DIAL)
        self._undial = redis.register_script(UNDIAL)

    @staticmethod
    def _record_json(attempt: Attempt) -> str:
        return json.dumps(
            {"campaign": attempt.campaign, "account": attempt.account, "at": attempt.at},
            separators=(",", ":"),
        )

    def key(self, did: str, callee: str) -> str:
        return f"{self.prefix}hist:{did}:{callee}"

    def dialed_key(self, callee: str) -> str:
        return f"{self.prefix}dialed:{{{callee}}}"

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

    async def record_dial(
        self,
        attempt: Attempt,
        candidates: Sequence[str],
        *,
        avoid_previous: bool,
        cap: int | None,
        via: str | None = None,
    ) -> tuple[Attempt | None, str | None]:
        """Record an attempt about to be dialed from the first usable candidate (see DIAL);
        `attempt.did` is ignored. Returns the attempt as recorded (None, nothing written,
        when every candidate is ruled out) and the number this callee was shown before.
        `via`: the campaign dials each callee once, and this call goes through that Asterisk
        host; AlreadyDialed if it has placed a call to this one (nothing written)."""
        minute = int(attempt.at // 60)
        keys = [
            f"{self.prefix}last:{attempt.callee}",
            f"{self.prefix}attempt:{attempt.id}",
            self.dialed_key(attempt.callee),
        ]
        for did in candidates:
            keys += [f"{self.prefix}cpm:{did}:{minute}", self.key(did, attempt.callee)]
        chosen, previous, placed = await self._dial(
            keys=keys,
            args=[
                attempt.id,
                self._record_json(attempt),
                attempt.outcome.value,
                attempt.at,
                self.window,
                -1 if cap is None else cap,
                1 if avoid_previous else 0,
                "" if via is None else attempt.campaign,
                via or "",
                *candidates,
            ],
        )
        if placed:
            raise AlreadyDialed(attempt.campaign, attempt.callee, placed.decode())
        recorded = dataclasses.replace(attempt, did=chosen.decode()) if chosen else None
        return recorded, previous.decode() or None

    async def undial(self, attempt: Attempt, previous: str | None) -> None:
        """Take back an attempt recorded by `record_dial` whose call never reached Asterisk."""
        minute = int(attempt.at // 60)
        await self._undial(
            keys=[
                f"{self.prefix}last:{attempt.callee}",
                f"{self.prefix}attempt:{attempt.id}",
                f"{self.prefix}cpm:{attempt.did}:{minute}",
                self.key(attempt.did, attempt.callee),
                self.dialed_key(attempt.callee),
            ],
            args=[attempt.id, attempt.did, previous or "", self.window, attempt.campaign],
        )

    async def dialed(self, campaign: str, callee: str) -> AlreadyDialed | None:
        """The call a campaign that dials each callee once placed to `callee`, if it did
        (recorded with the attempt, before the Originate)."""
        placed = await self.redis.hget(self.dialed_key(callee), campaign)
        return None if placed is None else AlreadyDialed(campaign, callee, placed.decode())

    async def attempts(self, did: str, callee: str) -> list[Attempt]:
        """Every attempt kept for this pair, in no particular order."""
        raw = await self.redis.hgetall(self.key(did, callee))
        return parse_attempts(did, callee, raw)

    async def claim(self, attempt: Attempt, token: str) -> bool:
        """Atomically count a callback routed to the attempt's campaign; True for the first.
        `token` names this call, to give the claim back with `release`."""
        result = await self._claim(
            keys=[self.key(attempt.did, attempt.callee)], args=[attempt.id, token]
        )
        return int(result) == 1

    async def release(self, attempt: Attempt, token: str) -> bool:
        """Give back the claim this call (`token`) made, when its route never reached Asterisk:
        the next callback is a first one again. False if there was none to give back."""
        result = await self._release(
            keys=[self.key(attempt.did, attempt.callee)], args=[attempt.id, token]
        )
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
