-- Token bucket. ARGV: record, limit, period_us, capacity, cost.
-- State "units last": tokens in units of 1/period (refilling `limit` units
-- per microsecond) and the time of the last decision. Mirrors
-- Quota::token_bucket in src/strategy.rs.
local limit = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local capacity = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local full = capacity * period
if full >= 9007199254740992 then
  -- A full bucket of 2^53 units or more (capacity × period ≤ 2^62, checked
  -- by Quota; the test above is exact: a product under 2^53 is, and one
  -- past it rounds to 2^53 or more): the same steps on exact integers.
  -- Remaining, reset and retry can pass 2^53 too, so all three go back as
  -- decimal strings.
  local N = bignum()
  local of, cmp, mul, sub = N.of, N.cmp, N.mul, N.sub
  local L, P, C, K = N.parse(ARGV[2]), N.parse(ARGV[3]), N.parse(ARGV[4]), N.parse(ARGV[5])
  local fullx = mul(C, P)
  local units, last = fullx, now
  local stored = redis.call('GET', key)
  if stored then
    local u, l = string.match(stored, '^(%d+) (%d+)$')
    if u then
      units, last = N.parse(u), tonumber(l)
    end
  end
  local elapsed = now - last
  if elapsed < 0 then
    elapsed = 0
  end
  if cmp(units, fullx) >= 0 then
    units = fullx
  elseif elapsed > 0 then
    local refill = mul(of(elapsed), L)
    if cmp(refill, sub(fullx, units)) >= 0 then
      units = fullx
    else
      units = N.add(units, refill)
    end
  end
  local allowed, retry = 0, {}
  if cmp(K, C) > 0 then
    retry = P
  else
    local need = mul(K, P)
    if cmp(need, units) <= 0 then
      units = sub(units, need)
      allowed = 1
    else
      retry = N.cdiv(sub(need, units), L)
    end
  end
  local reset = N.cdiv(sub(fullx, units), L)
  local remaining = N.divmod(units, P)
  if record then
    if #reset > 0 then
      if last < now then
        last = now
      end
      -- Past 2^53 µs (285 years), the milliseconds are counted exactly.
      local ttl
      if #reset <= 2 then
        ttl = ttl_ms(N.num(reset))
      else
        ttl = N.str(N.add(N.cdiv(reset, of(1000)), of(1)))
      end
      redis.call('SET', key, N.str(units) .. ' ' .. int(last), 'PX', ttl)
    elseif stored then
      redis.call('DEL', key)
    end
  end
  return {allowed, N.str(remaining), N.str(reset), N.str(retry), at}
end
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
return {allowed, remaining, reset, retry, at}
