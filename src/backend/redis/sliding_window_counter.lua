-- Sliding window counter over windows aligned to multiples of the period.
-- Per rate: limit, period_us. State "start prev curr" (the current
-- window's start and the two counts). Mirrors
-- src/strategy/sliding_window_counter.rs.
local ARITY = 2

-- `now` (not before the stored window), the start of its window and the
-- counts of the previous and current windows.
local function windows(stored, now, p)
  local s, a, b
  if stored then
    s, a, b = string.match(stored, '^(%d+) (%d+) (%d+)$')
  end
  if s then
    s = tonumber(s)
    -- A clock that stepped back into an earlier window decides at the
    -- start of the stored one.
    if now < s then
      now = s
    end
  end
  local current = now - math.fmod(now, p)
  local prev, curr = 0, 0
  if s then
    if s >= current then
      prev, curr = tonumber(a), tonumber(b)
    -- A difference, not s + p: exact with any period up to 100 years.
    elseif current - s == p then
      prev, curr = tonumber(b), 0
    end
  end
  return now, current, prev, curr
end

-- limit × period past 2^51 (at most 2^62, checked by Quota; the test is
-- exact as the token bucket's) or a period past 2^50 µs (at most 100
-- years): the products on exact integers (the prelude's bignum), the rest
-- on numbers that stay under 2^53 (counts under 2^33, times under 2 ×
-- period). With owed = ceil(prev × weight / period), the previous
-- window's weight in whole hits:
--   used + cost × p ≤ limit × p  ⟺  curr + cost + owed ≤ limit, and
--   floor((limit × p - used) / p) = limit - curr - owed when positive
-- (limit - curr - cost and limit - curr are whole numbers).
local function exact(limit, p)
  return limit * p > 2251799813685248 or p > 1125899906842624
end

-- The previous window's weight in whole hits, rounded up (exact path).
local function owed(prev, weight, p)
  if prev == 0 then
    return 0
  end
  local N = bignum()
  return N.num(N.cdiv(N.mul(N.of(prev), N.of(weight)), N.of(p)))
end

-- The reply and the state the counts leave.
local function settled(r, now, current, prev, curr, limit, p)
  local elapsed = now - current
  local weight = p - elapsed
  local remaining
  if exact(limit, p) then
    remaining = limit - curr - owed(prev, weight, p)
  else
    remaining = fdiv(limit * p - (prev * weight + curr * p), p)
  end
  if remaining < 0 then
    remaining = 0
  end
  -- current + 2p - now and current + p - now, without forming a sum past 2^53.
  local reset = 0
  if curr > 0 then
    reset = 2 * p - elapsed
  elseif prev > 0 then
    reset = weight
  end
  r.remaining, r.reset = remaining, reset
  if reset > 0 then
    r.state, r.px = int(current) .. ' ' .. int(prev) .. ' ' .. int(curr), ttl_ms(reset)
  end
  return r
end

local function decide(key, a, now, cost)
  local limit, p = tonumber(a[1]), tonumber(a[2])
  local stored = load(key)
  local current, prev, curr
  now, current, prev, curr = windows(stored, now, p)
  local weight = p - (now - current)
  local r = {allowed = 0, retry = 0, stored = stored}
  if exact(limit, p) then
    local N = bignum()
    local of, mul = N.of, N.mul
    if cost <= limit and curr + cost + owed(prev, weight, p) <= limit then
      r.allowed = 1
    elseif cost > limit then
      r.retry = p
    elseif curr + cost <= limit then
      -- Wait inside this window until the previous window weighs little
      -- enough (prev > 0 here: owed > limit - curr - cost ≥ 0).
      local room = N.divmod(mul(of(limit - curr - cost), of(p)), of(prev))
      if N.cmp(room, of(weight)) > 0 then
        room = weight
      else
        room = N.num(room)
      end
      r.retry = weight - room
    else
      -- Wait for the next window, where this window's count weighs in.
      local room = N.divmod(mul(of(limit - cost), of(p)), of(curr))
      if N.cmp(room, of(p)) > 0 then
        room = p
      else
        room = N.num(room)
      end
      r.retry = weight + (p - room)
      if r.retry > p then
        r.retry = p
      end
    end
  elseif cost <= limit and prev * weight + curr * p + cost * p <= limit * p then
    r.allowed = 1
  elseif cost > limit then
    r.retry = p
  elseif curr + cost <= limit then
    -- Wait inside this window until the previous window weighs little enough.
    local room = fdiv((limit - curr - cost) * p, prev)
    if room > weight then
      room = weight
    end
    r.retry = weight - room
  else
    -- Wait for the next window, where this window's count weighs in.
    local room = fdiv((limit - cost) * p, curr)
    if room > p then
      room = p
    end
    r.retry = weight + (p - room)
    if r.retry > p then
      r.retry = p
    end
  end
  if r.allowed == 1 then
    curr = curr + cost
  end
  return settled(r, now, current, prev, curr, limit, p)
end

-- Takes the hit counted at `hit` out of its window's count while that
-- window is the current or the previous one.
local function refund(key, a, now, cost, hit)
  local limit, p = tonumber(a[1]), tonumber(a[2])
  local stored = load(key)
  local current, prev, curr
  now, current, prev, curr = windows(stored, now, p)
  local window = hit - math.fmod(hit, p)
  if window == current then
    curr = curr - cost
    if curr < 0 then
      curr = 0
    end
  elseif current - window == p then
    prev = prev - cost
    if prev < 0 then
      prev = 0
    end
  end
  return settled({allowed = 1, retry = 0, stored = stored}, now, current, prev, curr, limit, p)
end
