"""Moving a callback history kept in the layout before hash tags to today's (see history.py).

Before:  hist:<did>:<callee>   last:<callee>    attempt:<id>   cpm:<did>:<minute>
Now:     hist:{<callee>}:<did> last:{<callee>}  (no index)     cpm:{<did>}:<minute>

Each old pair is merged into its new key: attempts missing there are copied, a callback count
takes the larger of the two, an outcome replaces only a pending one; the new key lives as long
as the longer of the two. Merging is idempotent, so the command runs once before the engines
are upgraded (while old engines still write the old keys) and once after, with `finish`, which
then deletes the old keys. Per-minute counts are left to expire (two minutes): dialers are
stopped during the upgrade. Old keys exist on a single server or behind Sentinel only: the old
scripts could not run on a Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from .connection import Client, literal_glob
from .history import CallbackHistory

# KEYS: old hist, new hist. ARGV: delete the old key (1/0). Returns the attempts copied.
MERGE_PAIR = """
local old = redis.call('HGETALL', KEYS[1])
local copied = 0
for i = 1, #old, 2 do
  local name, value = old[i], old[i + 1]
  local kind = string.sub(name, -2)
  if kind == ':c' then
    if tonumber(value) > tonumber(redis.call('HGET', KEYS[2], name) or '0') then
      redis.call('HSET', KEYS[2], name, value)
    end
  elseif kind == ':o' then
    local now = redis.call('HGET', KEYS[2], name)
    if not now or now == 'pending' then redis.call('HSET', KEYS[2], name, value) end
  elseif redis.call('HSETNX', KEYS[2], name, value) == 1 and not string.find(name, ':', 1, true)
  then
    copied = copied + 1
  end
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 and ttl > redis.call('PTTL', KEYS[2]) then redis.call('PEXPIRE', KEYS[2], ttl) end
if ARGV[1] == '1' then redis.call('DEL', KEYS[1]) end
return copied
"""

# KEYS: old last, new last. ARGV: delete the old key (1/0). A newer number already in the new
# key wins.
MERGE_LAST = """
local value = redis.call('GET', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if value and ttl > 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], value, 'PX', ttl)
end
if ARGV[1] == '1' then redis.call('DEL', KEYS[1]) end
return 1
"""


@dataclass
class MigrationReport:
    pairs: int = 0
    attempts: int = 0
    last_numbers: int = 0
    deleted: int = 0


async def migrate_history(
    redis: Client, history: CallbackHistory, *, finish: bool
) -> MigrationReport:
    """Merge every old-layout key into its new key; with `finish`, delete the old keys."""
    prefix = history.prefix
    delete = 1 if finish else 0
    report = MigrationReport()
    merge_pair = redis.register_script(MERGE_PAIR)
    merge_last = redis.register_script(MERGE_LAST)
    async for raw in redis.scan_iter(match=f"{literal_glob(prefix)}hist:[^{{]*", count=1000):
        key = raw.decode()
        did, sep, callee = key.removeprefix(f"{prefix}hist:").partition(":")
        if not sep or ":" in callee:
            continue  # not a key this engine wrote
        new = history.key(did, callee)
        report.attempts += int(await merge_pair(keys=[key, new], args=[delete]))
        report.pairs += 1
    async for raw in redis.scan_iter(match=f"{literal_glob(prefix)}last:[^{{]*", count=1000):
        key = raw.decode()
        callee = key.removeprefix(f"{prefix}last:")
        await merge_last(keys=[key, history.last_key(callee)], args=[delete])
        report.last_numbers += 1
    if finish:
        async for raw in redis.scan_iter(match=f"{literal_glob(prefix)}attempt:*", count=1000):
            report.deleted += int(await redis.delete(raw))
        report.deleted += report.pairs + report.last_numbers
    return report
