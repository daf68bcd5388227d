"""The callback history: outbound attempts per (DID, callee), kept for the callback window.

Layout (prefix `zv:` by default). The part in braces is the key's Redis Cluster hash tag: every
key about one callee lives in one slot, and so does every key about one number.
  hist:{<callee>}:<did>  hash, one per pair; for each attempt <id>:
      <id>    JSON {campaign, account, at}
      <id>:o  outcome
      <id>:c  callbacks routed back to the campaign
      <id>:k  the token of the call that holds the first-callback claim
  last:{<callee>}  the number the latest outbound call to this callee showed
  dialed:{<callee>}  hash, campaign -> "<attempt id> <did> <via>": the call a campaign that
      dials each callee once placed to this callee, and the Asterisk host it went through
      (written with the attempt, in the same step)
  cpm:{<did>}:<minute>  calls placed from a pool number in one minute (for the per-number cap)

Recording an outbound attempt is two atomic steps per candidate number: `count` takes a call off
the number's cap for this minute (on the number's slot); `commit`, on the callee's slot, refuses
the number the callee was shown last (and any number when the campaign, dialing each callee
once, has placed its call to this callee already), else makes it the last one and records the
attempt, with the campaign's mark on the callee. On
one server (or a Sentinel-watched master) both run in one script, DIAL, over the candidates in
order: one round trip. On a Cluster, where a script may touch one slot only, they run as two
scripts, COUNT then COMMIT; a COMMIT that finds the number there already (another call to this
callee took it meanwhile) changes nothing, the count is given back and the next candidate is
tried. Either way a callee is never shown the same pool number twice in a row, no number goes
over its cap, and the attempt is written before the call is placed.

One inbound decision reads one hash (HGETALL: one round trip). Claiming the first callback is a
Lua script, so that of two simultaneous callbacks at most one wins. A claim whose route never
reached Asterisk is given back by the call that made it (its token), once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import orjson
import structlog

from ..metrics import METRICS
from ..routing.model import Attempt, Outcome
from .connection import Client, cluster_node_for, is_cluster
from .multiplexed import MultiplexedRedis
from .number_health import NumberHealthStore

log = structlog.get_logger(__name__)

DIAL_CHUNK = 8  # candidate numbers per DIAL round trip

# Writes an attempt, drops those older than the window, and keeps the hash alive for a window.
_RECORD_FUNCTION = """
local function record(hist, id, json, outcome, now, window)
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
  redis.call('EXPIRE', hist, math.ceil(window))
end
"""

# KEYS: hist. ARGV: id, record JSON, outcome, now, window.
RECORD = (
    _RECORD_FUNCTION
    + """
record(KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
return 1
"""
)

# Counts a call against a number's cap this minute if it is under it (true), else false.
_COUNT_FUNCTION = """
local function count(key, cap)
  if tonumber(redis.call('GET', key) or '0') >= cap then return false end
  redis.call('INCR', key)
  redis.call('EXPIRE', key, 120)
  return true
end
"""

# The attempt being recorded, from ARGV[first ...]: id, record JSON, outcome, now, window,
# campaign dialing each callee once ('' for none), the host its call goes through.
_CALL_FUNCTION = """
local function call_from(first)
  return {id = ARGV[first], json = ARGV[first + 1], outcome = ARGV[first + 2],
          now = tonumber(ARGV[first + 3]), window = tonumber(ARGV[first + 4]),
          once = ARGV[first + 5], via = ARGV[first + 6]}
end
"""

# Makes `did` the callee's last number and records the call from it, with the campaign's mark
# on the callee when it dials each callee once; unless (with avoid) `did` is the callee's last
# number already, or the campaign has placed its call to this callee (its mark is returned).
# Returns whether it recorded, the previous number or '', the mark found or ''.
_COMMIT_FUNCTION = (
    _RECORD_FUNCTION
    + _CALL_FUNCTION
    + """
local function commit(last, hist, dialed, did, avoid, call)
  local previous = redis.call('GET', last) or ''
  if call.once ~= '' then
    local placed = redis.call('HGET', dialed, call.once)
    if placed then return false, previous, placed end
  end
  if avoid and previous == did then return false, previous, '' end
  redis.call('SET', last, did, 'EX', math.ceil(call.window))
  record(hist, call.id, call.json, call.outcome, call.now, call.window)
  if call.once ~= '' then
    redis.call('HSET', dialed, call.once, call.id .. ' ' .. did .. ' ' .. call.via)
    redis.call('EXPIRE', dialed, math.ceil(call.window))
  end
  return true, previous, ''
end
"""
)

# One server: unless the campaign has placed its call to this callee already (then nothing is
# written and its mark returned), the first candidate that is not the callee's last number
# (with avoid) and is under its cap (a negative cap: none, nothing counted) is counted and
# committed. Returns {chosen or '', previous or '', mark or ''}.
# KEYS: last:{<callee>}, dialed:{<callee>}, then per candidate cpm:{<did>}:<minute> and
#       hist:{<callee>}:<did>.
# ARGV: cap, avoid previous (1/0), the call (see _CALL_FUNCTION), candidates...
DIAL = (
    _COUNT_FUNCTION
    + _COMMIT_FUNCTION
    + """
local cap, avoid, call = tonumber(ARGV[1]), ARGV[2] == '1', call_from(3)
local previous = redis.call('GET', KEYS[1]) or ''
if call.once ~= '' then
  local placed = redis.call('HGET', KEYS[2], call.once)
  if placed then return {'', previous, placed} end
end
for i = 10, #ARGV do
  local did = ARGV[i]
  if not (avoid and did == previous) and (cap < 0 or count(KEYS[2 * i - 17], cap)) then
    commit(KEYS[1], KEYS[2 * i - 16], KEYS[2], did, avoid, call)
    return {did, previous, ''}
  end
end
return {'', previous, ''}
"""
)

# A Cluster, step zero on the callee's slot: {the callee's last number or '', the campaign's
# mark on the callee or ''}. KEYS: last:{<callee>}, dialed:{<callee>}. ARGV: campaign or ''.
PEEK = """
local placed = ARGV[1] ~= '' and redis.call('HGET', KEYS[2], ARGV[1]) or ''
return {redis.call('GET', KEYS[1]) or '', placed or ''}
"""

# A Cluster, step one on the number's slot: 1 counted, 0 at the cap.
# KEYS: cpm:{<did>}:<minute>. ARGV: cap.
COUNT = (
    _COUNT_FUNCTION
    + """
return count(KEYS[1], tonumber(ARGV[1])) and 1 or 0
"""
)

# Gives back a call counted by COUNT (or DIAL).
UNCOUNT = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
return 1
"""

# A Cluster, step two on the callee's slot: {1 recorded or 0, previous number or '', mark or ''}.
# KEYS: last:{<callee>}, hist:{<callee>}:<did>, dialed:{<callee>}.
# ARGV: did, avoid previous (1/0), the call (see _CALL_FUNCTION).
COMMIT = (
    _COMMIT_FUNCTION
    + """
local done, previous, placed = commit(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2] == '1',
                                      call_from(3))
return {done and 1 or 0, previous, placed}
"""
)

# Takes back a dial that never reached Asterisk: the attempt, the callee's last number (unless
# a later call has changed it since) and the campaign's mark (if it is this call's). Its count
# goes back with UNCOUNT.
# KEYS: last:{<callee>}, hist:{<callee>}:<did>, dialed:{<callee>}.
# ARGV: id, did, previous ('' for none), window, campaign.
UNDIAL = """
local mark = redis.call('HGET', KEYS[3], ARGV[5])
if mark and string.match(mark, '^%S+') == ARGV[1] then redis.call('HDEL', KEYS[3], ARGV[5]) end
if redis.call('GET', KEYS[1]) == ARGV[2] then
  if ARGV[3] == '' then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], ARGV[3], 'EX', math.ceil(tonumber(ARGV[4])))
  end
end
redis.call('HDEL', KEYS[2], ARGV[1], ARGV[1] .. ':o', ARGV[1] .. ':c', ARGV[1] .. ':k')
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

# Sets the outcome of an attempt: 2 when it was pending until now (the call's outcome is
# new), 1 when it had one already, 0 when it is gone (expired or never recorded).
SETTLE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local before = redis.call('HGET', KEYS[1], ARGV[1] .. ':o')
redis.call('HSET', KEYS[1], ARGV[1] .. ':o', ARGV[2])
if before == 'pending' and ARGV[2] ~= 'pending' then return 2 end
return 1
"""


class AlreadyDialed(Exception):
    """The campaign, which dials each callee once, has placed a call to this one already."""

    def __init__(self, campaign: str, callee: str, mark: str) -> None:
        self.attempt_id, self.did, self.via = (mark.split(" ", 2) + ["", ""])[:3]
        super().__init__(
            f"campaign {campaign} has dialed {callee} already (attempt {self.attempt_id})"
        )


def _record_json(attempt: Attempt) -> str:
    return json.dumps(
        {"campaign": attempt.campaign, "account": attempt.account, "at": attempt.at},
        separators=(",", ":"),
    )


@dataclasses.dataclass(frozen=True)
class _Dial:
    """One record_dial request, as its steps need it."""

    attempt: Attempt
    candidates: Sequence[str]
    avoid: bool
    cap: int | None
    via: str | None  # None: the campaign may dial the callee again
    window: float

    @property
    def once(self) -> str:
        """The campaign whose mark the call writes and checks ('' for none)."""
        return "" if self.via is None else self.attempt.campaign

    def call_args(self) -> list[str | float]:
        """The call as the scripts read it (_CALL_FUNCTION)."""
        a = self.attempt
        record = _record_json(a)
        return [a.id, record, a.outcome.value, a.at, self.window, self.once, self.via or ""]

    def refuse_if(self, placed: bytes) -> None:
        """AlreadyDialed if a script found the campaign's mark on the callee."""
        if placed:
            raise AlreadyDialed(self.attempt.campaign, self.attempt.callee, placed.decode())


class CallbackHistory:
    def __init__(
        self,
        redis: Client,
        prefix: str = "zv:",
        window: float = 7 * 86400.0,
        *,
        claim_replicas: int = 0,
        claim_wait: float = 0.1,
        health: NumberHealthStore | None = None,
        calls: MultiplexedRedis | None = None,
    ) -> None:
        self.redis = redis
        # The inbound route's commands (read, claim, release) go through `calls` if given:
        # one connection every call shares, far cheaper per command than redis-py's pool.
        self.calls: Client | MultiplexedRedis = calls or redis
        self.prefix = prefix
        self.window = window
        # After a won claim, wait (Redis WAIT) until this many replicas have it, at most
        # `claim_wait` seconds: a failover then cannot lose it (see docs/scaling.md).
        self.claim_replicas = claim_replicas
        self.claim_wait = claim_wait
        self.health = health  # each call's outcome counts there once, when first settled
        self._record = redis.register_script(RECORD)
        self._claim = self.calls.register_script(CLAIM)
        self._release = self.calls.register_script(RELEASE)
        self._settle = redis.register_script(SETTLE)
        self._dial = redis.register_script(DIAL)
        self._peek = redis.register_script(PEEK)
        self._count = redis.register_script(COUNT)
        self._uncount = redis.register_script(UNCOUNT)
        self._commit = redis.register_script(COMMIT)
        self._undial = redis.register_script(UNDIAL)

    def key(self, did: str, callee: str) -> str:
        return f"{self.prefix}hist:{{{callee}}}:{did}"

    def last_key(self, callee: str) -> str:
        return f"{self.prefix}last:{{{callee}}}"

    def count_key(self, did: str, at: float) -> str:
        return f"{self.prefix}cpm:{{{did}}}:{int(at // 60)}"

    def dialed_key(self, callee: str) -> str:
        return f"{self.prefix}dialed:{{{callee}}}"

    async def record(self, attempt: Attempt, now: float) -> None:
        key = self.key(attempt.did, attempt.callee)
        record = _record_json(attempt)
        await self._record(
            keys=[key], args=[attempt.id, record, attempt.outcome.value, now, self.window]
        )
        if attempt.callbacks:
            await self.redis.hset(key, f"{attempt.id}:c", attempt.callbacks)

    async def record_dial(
        self,
        attempt: Attempt,
        candidates: Sequence[str],
        *,
        avoid_previous: bool,
        cap: int | None,
        via: str | None = None,
    ) -> tuple[Attempt | None, str | None]:
        """Record an attempt about to be dialed from the first usable candidate: not the
        number this callee was shown last (with `avoid_previous`), under `cap` calls this
        minute (None: no cap, nothing counted); `attempt.did` is ignored. Returns the attempt
        as recorded (None, nothing written, when every candidate is ruled out) and the number
        this callee was shown before. The rule is routing.callerid.pick, which the tests hold
        both ways (one script, or the steps on a Cluster) to. `via`: the campaign dials each
        callee once, and this call goes through that Asterisk host; AlreadyDialed if it has
        placed a call to this one (nothing written)."""
        dial = _Dial(attempt, candidates, avoid_previous, cap, via, self.window)
        if is_cluster(self.redis):
            chosen, previous = await self._dial_in_steps(dial)
        else:
            chosen, previous = await self._dial_in_one(dial)
        recorded = dataclasses.replace(attempt, did=chosen) if chosen else None
        return recorded, previous

    async def _dial_in_one(self, dial: _Dial) -> tuple[str | None, str | None]:
        callee = dial.attempt.callee
        previous = None
        # A few candidates per round trip: the first usable one is nearly always among them,
        # and a big pool does not make every call's request big.
        for start in range(0, len(dial.candidates), DIAL_CHUNK):
            chunk = dial.candidates[start : start + DIAL_CHUNK]
            keys = [self.last_key(callee), self.dialed_key(callee)]
            for did in chunk:
                keys += [self.count_key(did, dial.attempt.at), self.key(did, callee)]
            cap = -1 if dial.cap is None else dial.cap
            chosen, shown, placed = await self._dial(
                keys=keys, args=[cap, 1 if dial.avoid else 0, *dial.call_args(), *chunk]
            )
            dial.refuse_if(placed)
            previous = shown.decode() or None
            if chosen:
                return chosen.decode(), previous
        return None, previous

    async def _dial_in_steps(self, dial: _Dial) -> tuple[str | None, str | None]:
        attempt, cap = dial.attempt, dial.cap
        last, dialed = self.last_key(attempt.callee), self.dialed_key(attempt.callee)
        shown, placed = await self._peek(keys=[last, dialed], args=[dial.once])
        dial.refuse_if(placed)
        previous = shown.decode() or None
        counts: dict[str, int] | None = None
        for did in dial.candidates:
            if dial.avoid and did == previous:
                continue
            count_key = self.count_key(did, attempt.at)
            if cap is not None:
                if counts is not None and counts[did] >= cap:
                    continue
                if not await self._count(keys=[count_key], args=[cap]):
                    # At its cap: read every count once, so that a full pool costs one more
                    # round trip rather than one per number.
                    counts = counts or await self._counts(dial.candidates, attempt.at)
                    continue
            done, shown, placed = await self._commit(
                keys=[last, self.key(did, attempt.callee), dialed],
                args=[did, 1 if dial.avoid else 0, *dial.call_args()],
            )
            if not done and cap is not None:  # given back: not placed from `did` after all
                await self._uncount(keys=[count_key])
            dial.refuse_if(placed)
            previous = shown.decode() or None
            if done:
                return did, previous
        return None, previous

    async def _counts(self, candidates: Sequence[str], at: float) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for did in candidates:
                pipe.get(self.count_key(did, at))
            counts = await pipe.execute()
        return {did: int(count or 0) for did, count in zip(candidates, counts, strict=True)}

    async def undial(self, attempt: Attempt, previous: str | None) -> None:
        """Take back an attempt recorded by `record_dial` whose call never reached Asterisk."""
        await self._undial(
            keys=[
                self.last_key(attempt.callee),
                self.key(attempt.did, attempt.callee),
                self.dialed_key(attempt.callee),
            ],
            args=[attempt.id, attempt.did, previous or "", self.window, attempt.campaign],
        )
        await self._uncount(keys=[self.count_key(attempt.did, attempt.at)])

    async def dialed(self, campaign: str, callee: str) -> AlreadyDialed | None:
        """The call a campaign that dials each callee once placed to `callee`, if it did
        (recorded with the attempt, before the Originate)."""
        placed = await self.redis.hget(self.dialed_key(callee), campaign)
        return None if placed is None else AlreadyDialed(campaign, callee, placed.decode())

    async def attempts(self, did: str, callee: str) -> list[Attempt]:
        """Every attempt kept for this pair, in no particular order."""
        raw = await self.calls.hgetall(self.key(did, callee))
        return parse_attempts(did, callee, raw)

    async def claim(self, attempt: Attempt, token: str) -> bool:
        """Atomically count a callback routed to the attempt's campaign; True for the first.
        `token` names this call, to give the claim back with `release`."""
        key = self.key(attempt.did, attempt.callee)
        if not self.claim_replicas:
            return int(await self._claim(keys=[key], args=[attempt.id, token])) == 1
        # WAIT counts the replicas that have this connection's writes: the claim and the WAIT
        # go in one pipeline, so on one connection (of the key's node on a Cluster).
        node = await cluster_node_for(self.redis, key)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.eval(CLAIM, 1, key, attempt.id, token)
            wait = [self.claim_replicas, int(self.claim_wait * 1000)]
            if node is None:
                pipe.execute_command("WAIT", *wait)
            else:
                pipe.execute_command("WAIT", *wait, target_nodes=node)
            result, replicas = await pipe.execute()
        won = int(result) == 1
        if won and int(replicas) < self.claim_replicas:
            METRICS.store_error("claim_replication")
            log.warning(
                "first-callback claim not on enough replicas in time: a failover now could lose it",
                attempt=attempt.id,
                replicas=int(replicas),
                wanted=self.claim_replicas,
            )
        return won

    async def release(self, attempt: Attempt, token: str) -> bool:
        """Give back the claim this call (`token`) made, when its route never reached Asterisk:
        the next callback is a first one again. False if there was none to give back."""
        result = await self._release(
            keys=[self.key(attempt.did, attempt.callee)], args=[attempt.id, token]
        )
        return int(result) == 1

    async def settle(self, attempt: Attempt, outcome: Outcome, *, placed: bool = True) -> bool:
        """Set an attempt's outcome; False when it is gone (expired or never recorded). The
        first outcome of a call counts in its number's health, unless the call never reached
        Asterisk (`placed` False); settling again does not."""
        result = int(
            await self._settle(
                keys=[self.key(attempt.did, attempt.callee)], args=[attempt.id, outcome.value]
            )
        )
        if result == 2 and placed and self.health is not None:
            await self.health.count(attempt.did, outcome is Outcome.ANSWERED, attempt.at)
        return result > 0


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
            record = orjson.loads(value)
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
