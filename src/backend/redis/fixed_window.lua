-- Fixed window starting at the key's first hit. ARGV: record, limit,
-- period_us, cost. State "start count". Mirrors Quota::fixed_window.
local limit = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local start, count = now, 0
local stored = redis.call('GET', key)
if stored then
  local s, c = string.match(stored, '^(%d+) (%d+)$')
  if s and now < tonumber(s) + period then
    start, count = tonumber(s), tonumber(c)
  end
end
-- A clock that stepped back stays in the stored window.
if now < start then
  now = start
end
local finish = start + period
local allowed = 0
if cost <= limit and count + cost <= limit then
  count = count + cost
  allowed = 1
end
local reset = finish - now
if record then
  redis.call('SET', key, int(start) .. ' ' .. int(count), 'PX', ttl_ms(reset))
end
-- A cost above the limit never fits in a window: one period.
local retry = reset
if cost > limit then
  retry = period
end
local remaining = limit - count
if remaining < 0 then
  remaining = 0
end
return {allowed, remaining, reset, retry, at}
