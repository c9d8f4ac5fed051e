-- Generic cell rate algorithm (virtual scheduling). ARGV: record,
-- emission_interval_us, capacity, period_us, cost. State "tat" (the
-- theoretical arrival time). Mirrors Quota::gcra.
local interval = tonumber(ARGV[2])
local capacity = tonumber(ARGV[3])
local period = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local tolerance = capacity * interval
local tat = now
local stored = redis.call('GET', key)
if stored then
  local t = string.match(stored, '^(%d+)$')
  if t then
    tat = tonumber(t)
  end
end
local allowed, retry = 0, 0
if cost > capacity then
  retry = period
else
  local base = tat
  if base < now then
    base = now
  end
  local new_tat = base + cost * interval
  if new_tat <= now + tolerance then
    allowed = 1
    tat = new_tat
  else
    retry = new_tat - tolerance - now
  end
end
local busy = tat
if busy < now then
  busy = now
end
-- Clamped: a server clock that stepped back may give a `now` earlier than
-- the one that set `tat`.
local room = now + tolerance - busy
if room < 0 then
  room = 0
end
local remaining = fdiv(room, interval)
local reset = busy - now
if record then
  if reset > 0 then
    redis.call('SET', key, int(tat), 'PX', ttl_ms(reset))
  elseif stored then
    redis.call('DEL', key)
  end
end
return {allowed, remaining, reset, retry, at}
