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
  -- A difference, not s + p: exact with any period up to 100 years.
  elseif current - s == p then
    prev, curr = tonumber(b), 0
  end
end
local elapsed = now - current
local weight = p - elapsed
if limit * p > 2251799813685248 or p > 1125899906842624 then
  -- limit × period past 2^51 (at most 2^62, checked by Quota; the test is
  -- exact as the token bucket's) or a period past 2^50 µs (at most 100
  -- years): the products on exact integers (the prelude's bignum),
  -- the rest on numbers that stay under 2^53 (counts under 2^33, times
  -- under 2 × period). With owed = ceil(prev × weight / period), the
  -- previous window's weight in whole hits:
  --   used + cost × p ≤ limit × p  ⟺  curr + cost + owed ≤ limit, and
  --   floor((limit × p - used) / p) = limit - curr - owed when positive
  -- (limit - curr - cost and limit - curr are whole numbers).
  local N = bignum()
  local of, mul = N.of, N.mul
  local owed = 0
  if prev > 0 then
    owed = N.num(N.cdiv(mul(of(prev), of(weight)), of(p)))
  end
  local allowed, retry = 0, 0
  if cost <= limit and curr + cost + owed <= limit then
    allowed = 1
  elseif cost > limit then
    retry = p
  elseif curr + cost <= limit then
    -- Wait inside this window until the previous window weighs little
    -- enough (prev > 0 here: owed > limit - curr - cost ≥ 0).
    local room = N.divmod(mul(of(limit - curr - cost), of(p)), of(prev))
    if N.cmp(room, of(weight)) > 0 then
      room = weight
    else
      room = N.num(room)
    end
    retry = weight - room
  else
    -- Wait for the next window, where this window's count weighs in.
    local room = N.divmod(mul(of(limit - cost), of(p)), of(curr))
    if N.cmp(room, of(p)) > 0 then
      room = p
    else
      room = N.num(room)
    end
    retry = weight + (p - room)
    if retry > p then
      retry = p
    end
  end
  if allowed == 1 then
    curr = curr + cost
  end
  local remaining = limit - curr - owed
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
  if record then
    if reset > 0 then
      redis.call('SET', key, int(current) .. ' ' .. int(prev) .. ' ' .. int(curr), 'PX', ttl_ms(reset))
    elseif stored then
      redis.call('DEL', key)
    end
  end
  return {allowed, remaining, reset, retry, at}
end
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
return {allowed, remaining, reset, retry, at}
