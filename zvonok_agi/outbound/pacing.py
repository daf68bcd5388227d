"""Limits that hold across every dialer process, kept in Redis on Redis's clock.

- `Leases`: calls at once on one Asterisk host or one trunk. A call holds a lease from before
  its Originate until its outcome; a lease also ends by itself after `ttl` unless renewed
  (each dialer renews its own every heartbeat), so the room held by a dialer that died
  comes back.
- `Pace`: calls started per second on one trunk, evenly spaced: each call takes the next free
  slot, 1/rate after the one before, if it is within `horizon`, and waits for it.

Each limit is one key with its own hash tag: each script touches one Redis Cluster slot.
"""

from __future__ import annotations

from collections.abc import Iterable

# KEYS: the lease set. ARGV: member, capacity, ttl (ms). 1: leased; 0: at capacity.
ACQUIRE = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

# KEYS: the lease set. ARGV: ttl (ms), members... Pushes the end of these leases back.
RENEW = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""

# KEYS: when the next slot is free. ARGV: interval (ms), horizon (ms).
# Returns ms to wait for the slot taken (>= 0), or -(ms) to come back after (none taken).
TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
if slot - now > tonumber(ARGV[2]) then
  return -math.max(math.ceil(slot - now - tonumber(ARGV[2])), 1)
end
redis.call('SET', KEYS[1], tostring(slot + tonumber(ARGV[1])), 'PX',
           math.ceil(tonumber(ARGV[1])) + 60000)
return math.ceil(slot - now)
"""


class Leases:
    """At most `capacity` calls at once under one name (a host, a trunk), across dialers."""

    def __init__(self, redis, key: str, capacity: int, ttl: float) -> None:
        self.redis = redis
        self.key = key
        self.capacity = capacity
        self.ttl_ms = int(ttl * 1000)
        self._acquire = redis.register_script(ACQUIRE)
        self._renew = redis.register_script(RENEW)

    async def acquire(self, call: str) -> bool:
        return bool(await self._acquire(keys=[self.key], args=[call, self.capacity, self.ttl_ms]))

    async def release(self, call: str) -> None:
        await release(self.redis, [self], call)

    async def renew(self, calls: Iterable[str]) -> None:
        members = list(calls)
        if members:
            await self._renew(keys=[self.key], args=[self.ttl_ms, *members])

    async def held(self) -> int:
        """Leases held now (expired ones not counted)."""
        seconds, micros = await self.redis.time()
        return await self.redis.zcount(self.key, seconds * 1000 + micros // 1000, "+inf")


async def release(redis, leases: list[Leases], call: str) -> None:
    """End `call`'s leases, in one round trip."""
    if leases:
        async with redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                pipe.zrem(lease.key, call)
            await pipe.execute()


class Pace:
    """At most `rate` calls started per second under one key, evenly spaced, across dialers."""

    def __init__(self, redis, key: str, rate: float, horizon: float) -> None:
        if not rate > 0:
            raise ValueError("the rate must be positive")
        self.redis = redis
        self.key = key
        self.interval_ms = 1000.0 / rate
        self.horizon_ms = int(horizon * 1000)
        self._take = redis.register_script(TAKE)

    async def take(self) -> float:
        """Take the next slot: seconds to wait for it (>= 0); or, when it is further off than
        the horizon, minus the seconds to come back after (no slot taken)."""
        ms = int(await self._take(keys=[self.key], args=[self.interval_ms, self.horizon_ms]))
        return ms / 1000
