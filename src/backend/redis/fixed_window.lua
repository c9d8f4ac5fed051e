-- Fixed window, starting at the first hit counted after the previous one
-- ended. Per rate: limit, period_us. State "start count". Mirrors
-- src/strategy/fixed_window.rs.
local ARITY = 2

-- The window `now` falls in: the stored one while it lasts (true), else a
-- new one (false).
local function window(stored, now, period)
  if stored then
    local s, c = string.match(stored, '^(%d+) (%d+)$')
    if s and now < tonumber(s) + period then
      return tonumber(s), tonumber(c), true
    end
  end
  return now, 0, false
end

-- The reply and the state a window holding `count` leaves.
local function settled(r, start, count, now, limit, period)
  -- A clock that stepped back stays in the stored window.
  if now < start then
    now = start
  end
  r.reset = start + period - now
  r.remaining = limit - count
  if r.remaining < 0 then
    r.remaining = 0
  end
  r.state, r.px = int(start) .. ' ' .. int(count), ttl_ms(r.reset)
  return r
end

local function decide(key, a, now, cost)
  local limit, period = tonumber(a[1]), tonumber(a[2])
  local stored = load(key)
  local start, count = window(stored, now, period)
  local r = {allowed = 0, stored = stored}
  if cost <= limit and count + cost <= limit then
    count = count + cost
    r.allowed = 1
  end
  settled(r, start, count, now, limit, period)
  -- A cost above the limit never fits in a window: one period.
  r.retry = r.reset
  if cost > limit then
    r.retry = period
  end
  return r
end

-- Takes the hit counted at `hit` out of the count, if its window is the
-- current one; with no current window, changes nothing.
local function refund(key, a, now, cost, hit)
  local limit, period = tonumber(a[1]), tonumber(a[2])
  local stored = load(key)
  -- No current window (it ended, or none was stored): nothing to give
  -- back, and a refund does not start a window.
  local start, count, held = window(stored, now, period)
  if held and hit >= start then
    count = count - cost
    if count < 0 then
      count = 0
    end
  end
  local r = settled({allowed = 1, retry = 0, stored = stored}, start, count, now, limit, period)
  r.keep = not held
  return r
end
