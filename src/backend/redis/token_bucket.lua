-- Token bucket. Per rate: limit, period_us, capacity. State "units last":
-- tokens in units of 1/period (refilling `limit` units per microsecond)
-- and the time of the last decision. Mirrors src/strategy/token_bucket.rs.
local ARITY = 3
local BIG = 9007199254740992

-- Past 2^53 units (capacity × period ≤ 2^62, checked by Quota; the test
-- is exact: a product under 2^53 is, and one past it rounds to 2^53 or
-- more): the same steps on exact integers. Remaining, reset and retry can
-- pass 2^53 too, so all three go back as decimal strings. The cost is
-- read from ARGV[2], exact at any size, unless the driver asks at cost 0.
local function big(key, a, now, cost, refunding)
  local N = bignum()
  local of, cmp, mul, sub = N.of, N.cmp, N.mul, N.sub
  local L, P, C, K = N.parse(a[1]), N.parse(a[2]), N.parse(a[3]), N.parse(cost == 0 and '0' or ARGV[2])
  local fullx = mul(C, P)
  local units, last = fullx, now
  local stored = load(key)
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
  local r = {allowed = 0, stored = stored}
  local retry = {}
  if refunding then
    local back = mul(K, P)
    if cmp(back, sub(fullx, units)) >= 0 then
      units = fullx
    else
      units = N.add(units, back)
    end
    r.allowed = 1
  elseif cmp(K, C) > 0 then
    retry = P
  else
    local need = mul(K, P)
    if cmp(need, units) <= 0 then
      units = sub(units, need)
      r.allowed = 1
    else
      retry = N.cdiv(sub(need, units), L)
    end
  end
  local reset = N.cdiv(sub(fullx, units), L)
  r.remaining, r.reset, r.retry = N.str(N.divmod(units, P)), N.str(reset), N.str(retry)
  if #reset > 0 then
    if last < now then
      last = now
    end
    r.state = N.str(units) .. ' ' .. int(last)
    -- Past 2^53 µs (285 years), the milliseconds are counted exactly.
    if #reset <= 2 then
      r.px = ttl_ms(N.num(reset))
    else
      r.px = N.str(N.add(N.cdiv(reset, of(1000)), of(1)))
    end
  end
  return r
end

-- The tokens at `now` (a fresh bucket is full) and the last decision's time.
local function refilled(stored, limit, full, now)
  local units, last = full, now
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
    return full, last
  end
  return units + elapsed * limit, last
end

-- The reply and the state a bucket of `units` leaves.
local function settled(r, units, last, now, limit, period, full)
  local reset = cdiv(full - units, limit)
  r.remaining, r.reset = fdiv(units, period), reset
  if reset > 0 then
    if last < now then
      last = now
    end
    r.state, r.px = int(units) .. ' ' .. int(last), ttl_ms(reset)
  end
  return r
end

local function decide(key, a, now, cost)
  local limit, period, capacity = tonumber(a[1]), tonumber(a[2]), tonumber(a[3])
  local full = capacity * period
  if full >= BIG then
    return big(key, a, now, cost, false)
  end
  local stored = load(key)
  local units, last = refilled(stored, limit, full, now)
  local r = {allowed = 0, retry = 0, stored = stored}
  if cost > capacity then
    r.retry = period
  else
    local need = cost * period
    if need <= units then
      units = units - need
      r.allowed = 1
    else
      r.retry = cdiv(need - units, limit)
    end
  end
  return settled(r, units, last, now, limit, period, full)
end

-- Gives `cost` tokens back, up to the capacity.
local function refund(key, a, now, cost)
  local limit, period, capacity = tonumber(a[1]), tonumber(a[2]), tonumber(a[3])
  local full = capacity * period
  if full >= BIG then
    return big(key, a, now, cost, true)
  end
  local stored = load(key)
  local units, last = refilled(stored, limit, full, now)
  -- As in `refilled`: a product past 2^53 is past the gap too.
  if cost * period >= full - units then
    units = full
  else
    units = units + cost * period
  end
  return settled({allowed = 1, retry = 0, stored = stored}, units, last, now, limit, period, full)
end
