-- Token bucket. ARGV: record, limit, period_us, capacity, cost.
-- State "units last": tokens in units of 1/period (refilling `limit` units
-- per microsecond) and the time of the last decision. Mirrors
-- Quota::token_bucket in src/strategy.rs.
local limit = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local capacity = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local full = capacity * period
local units, last = full, now
local stored = redis.call('GET', key)
if stored then
  local u, l = string.match(stored, '^(%d+) (%d+)$')
  if u then
    units, last = tonumber(u), tonumber(l)
  end
end
local elapsed = now - last
if elapsed < 0 then
  elapsed = 0
end
-- units = min(units + elapsed * limit, full), without forming a product
-- past 2^53 when it is not needed (a product past it is past `gap` too).
local gap = full - units
if elapsed * limit >= gap then
  units = full
else
  units = units + elapsed * limit
end
local allowed, retry = 0, 0
if cost > capacity then
  retry = period
else
  local need = cost * period
  if need <= units then
    units = units - need
    allowed = 1
  else
    retry = cdiv(need - units, limit)
  end
end
local reset = cdiv(full - units, limit)
local remaining = fdiv(units, period)
if record then
  if reset > 0 then
    if last < now then
      last = now
    end
    redis.call('SET', key, int(units) .. ' ' .. int(last), 'PX', ttl_ms(reset))
  elseif stored then
    redis.call('DEL', key)
  end
end
return {allowed, remaining, reset, retry}
