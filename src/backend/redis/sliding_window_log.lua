-- Sliding window log: a sorted set of one member per admitted unit of cost,
-- scored by its time. ARGV: record, limit, period_us, cost. Mirrors
-- Quota::sliding_window_log.
local limit = tonumber(ARGV[2])
local p = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
-- A clock that stepped back decides at the newest entry.
local newer = redis.call('ZREVRANGEBYSCORE', key, '+inf', '(' .. int(now), 'WITHSCORES', 'LIMIT', 0, 1)
if newer[2] then
  now = tonumber(newer[2])
end
-- Entries expire once t + p <= now; the live ones have t > now - p.
local live = '(' .. int(now - p)
local count
if record then
  redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now - p))
  count = redis.call('ZCARD', key)
else
  count = redis.call('ZCOUNT', key, live, '+inf')
end
local allowed, retry = 0, 0
if cost <= limit and count + cost <= limit then
  allowed = 1
elseif cost > limit then
  retry = p
else
  local must_expire = count + cost - limit
  local entry = redis.call('ZRANGEBYSCORE', key, live, '+inf', 'WITHSCORES', 'LIMIT', must_expire - 1, 1)
  retry = tonumber(entry[2]) + p - now
  if retry < 0 then
    retry = 0
  end
end
local newest = nil
if allowed == 1 then
  newest = now
  if record then
    -- Members are unique: "now:index", indices counting on from the live count.
    local i = 0
    while i < cost do
      local args = {}
      local n = 0
      while i < cost and n < 1000 do
        args[#args + 1] = int(now)
        args[#args + 1] = int(now) .. ':' .. int(count + i)
        i = i + 1
        n = n + 1
      end
      redis.call('ZADD', key, unpack(args))
    end
  end
  count = count + cost
elseif count > 0 then
  local last = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
  newest = tonumber(last[2])
end
local reset = 0
if newest then
  reset = newest + p - now
  if reset < 0 then
    reset = 0
  end
end
if record and reset > 0 then
  redis.call('PEXPIRE', key, ttl_ms(reset))
end
local remaining = limit - count
if remaining < 0 then
  remaining = 0
end
return {allowed, remaining, reset, retry, at}
