-- Sliding window log: a sorted set of one member per admitted unit of
-- cost, scored by its time. Per rate: limit, period_us. Mirrors
-- src/strategy/sliding_window_log.rs. Members are "time:index", the index
-- zero-padded and counting the members of that time, so that the members
-- of one time sort by index and a refund takes the last ones.
local ARITY = 2

-- `now` (not before the newest entry: a clock that stepped back decides
-- there), and the number of live entries (those with t > now - p).
local function live(key, now, p)
  local newer = redis.call('ZREVRANGEBYSCORE', key, '+inf', '(' .. int(now), 'WITHSCORES', 'LIMIT', 0, 1)
  if newer[2] then
    now = tonumber(newer[2])
  end
  return now, redis.call('ZCOUNT', key, '(' .. int(now - p), '+inf')
end

-- The reply for a log of `count` live entries, the newest at `newest`.
local function settled(r, now, count, newest, limit, p)
  r.remaining = limit - count
  if r.remaining < 0 then
    r.remaining = 0
  end
  r.reset = 0
  if newest then
    r.reset = newest + p - now
    if r.reset < 0 then
      r.reset = 0
    end
  end
  r.expired = int(now - p)
  if r.reset > 0 then
    r.px = ttl_ms(r.reset)
  end
  return r
end

local function newest(key)
  local last = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
  return tonumber(last[2])
end

local function decide(key, a, now, cost)
  local limit, p = tonumber(a[1]), tonumber(a[2])
  local count
  now, count = live(key, now, p)
  local r = {allowed = 0, retry = 0}
  if cost <= limit and count + cost <= limit then
    r.allowed, r.add, r.time = 1, cost, now
    if cost > 0 then
      return settled(r, now, count + cost, now, limit, p)
    end
    -- Cost 0 (what a rate holds while another refuses): the log as it is.
  elseif cost > limit then
    r.retry = p
  else
    local must_expire = count + cost - limit
    local entry = redis.call('ZRANGEBYSCORE', key, '(' .. int(now - p), '+inf', 'WITHSCORES', 'LIMIT', must_expire - 1, 1)
    r.retry = tonumber(entry[2]) + p - now
    if r.retry < 0 then
      r.retry = 0
    end
  end
  local last = nil
  if count > 0 then
    last = newest(key)
  end
  return settled(r, now, count, last, limit, p)
end

-- Removes the entries of the hit logged at `hit` (the last `cost` of that
-- time) that are still in the log.
local function refund(key, a, now, cost, hit)
  local limit, p = tonumber(a[1]), tonumber(a[2])
  local members = redis.call('ZREVRANGEBYSCORE', key, int(hit), int(hit), 'LIMIT', 0, cost)
  if #members > 0 then
    redis.call('ZREM', key, unpack(members))
  end
  local count
  now, count = live(key, now, p)
  local last = nil
  if count > 0 then
    last = newest(key)
  end
  return settled({allowed = 1, retry = 0}, now, count, last, limit, p)
end

-- The new entries are added before the expired ones are removed: on a
-- Redis at its `maxmemory` with `noeviction`, a script's first write that
-- may grow memory is refused (OOM), but once a script has written, the
-- rest of it is let through.
save = function(key, r)
  if r.add then
    local time = int(r.time)
    local first = redis.call('ZCOUNT', key, time, time)
    local i = 0
    while i < r.add do
      local args = {}
      local n = 0
      while i < r.add and n < 1000 do
        args[#args + 1] = time
        args[#args + 1] = time .. ':' .. string.format('%07d', first + i)
        i = i + 1
        n = n + 1
      end
      redis.call('ZADD', key, unpack(args))
    end
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', r.expired)
  if r.px then
    redis.call('PEXPIRE', key, r.px)
  end
end
