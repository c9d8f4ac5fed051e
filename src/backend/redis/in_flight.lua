-- In-flight places: a sorted set of the places held on a key, each scored
-- by when its lease ends (Unix µs on the server's clock). KEYS[1]: the key.
-- ARGV: 'acquire', 'release' or 'renew'; the place's id; the most places;
-- the lease (µs). Returns {allowed (1/0), places left, now}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local key, op, place = KEYS[1], ARGV[1], ARGV[2]
if op == 'release' then
  redis.call('ZREM', key, place)
  return {1, 0, now}
end
local max, lease = tonumber(ARGV[3]), tonumber(ARGV[4])
local ends = string.format('%d', now + lease)
local expired = string.format('%d', now)
-- The key lives as long as its latest lease.
local ttl = string.format('%d', math.floor(lease / 1000) + 1)
if op == 'renew' then
  -- A place whose lease ended (held by an app instance that stopped
  -- renewing it: a crash) is free again, and is not renewed.
  redis.call('ZREMRANGEBYSCORE', key, '-inf', expired)
  if redis.call('ZADD', key, 'XX', 'CH', ends, place) == 1 then
    redis.call('PEXPIRE', key, ttl)
  end
  return {1, 0, now}
end
-- Live places only. The new place is added before the ended ones are
-- removed: on a Redis at its `maxmemory` with `noeviction`, a script's
-- first write that may grow memory is refused (OOM), and a refusal writes
-- nothing.
local held = redis.call('ZCOUNT', key, '(' .. expired, '+inf')
if held >= max then
  return {0, 0, now}
end
redis.call('ZADD', key, ends, place)
redis.call('ZREMRANGEBYSCORE', key, '-inf', expired)
redis.call('PEXPIRE', key, ttl)
return {1, max - held - 1, now}
