-- Sliding window counter over windows aligned to multiples of the period.
-- ARGV: record, limit, period_us, cost. State "start prev curr" (the
-- current window's start and the two counts). Mirrors
-- Quota::sliding_window_counter.
local limit = tonumber(ARGV[2])
local p = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local prev, curr = 0, 0
local stored = redis.call('GET', key)
local s, a, b
if stored then
  s, a, b = string.match(stored, '^(%d+) (%d+) (%d+)$')
end
if s then
  s = tonumber(s)
  -- A clock that stepped back into an earlier window decides at the start
  -- of the stored one.
  if now < s then
    now = s
  end
end
local current = now - math.fmod(now, p)
if s then
  if s >= current then
    prev, curr = tonumber(a), tonumber(b)
  elseif s + p == current then
    prev, curr = tonumber(b), 0
  end
end
local elapsed = now - current
local weight = p - elapsed
local used = prev * weight + curr * p
local allowed, retry = 0, 0
if cost <= limit and used + cost * p <= limit * p then
  allowed = 1
elseif cost > limit then
  retry = p
elseif curr + cost <= limit then
  -- Wait inside this window until the previous window weighs little enough.
  local room = fdiv((limit - curr - cost) * p, prev)
  if room > weight then
    room = weight
  end
  retry = weight - room
else
  -- Wait for the next window, where this window's count weighs in.
  local room = fdiv((limit - cost) * p, curr)
  if room > p then
    room = p
  end
  retry = weight + (p - room)
  if retry > p then
    retry = p
  end
end
if allowed == 1 then
  curr = curr + cost
end
used = prev * weight + curr * p
local remaining = 0
if limit * p > used then
  remaining = fdiv(limit * p - used, p)
end
local reset = 0
if curr > 0 then
  reset = current + 2 * p - now
elseif prev > 0 then
  reset = current + p - now
end
if record then
  if reset > 0 then
    redis.call('SET', key, int(current) .. ' ' .. int(prev) .. ' ' .. int(curr), 'PX', ttl_ms(reset))
  elseif stored then
    redis.call('DEL', key)
  end
end
return {allowed, remaining, reset, retry}
