-- Generic cell rate algorithm (virtual scheduling). Per rate:
-- emission_interval_us, capacity, period_us. State "tat" (the theoretical
-- arrival time). Mirrors src/strategy/gcra.rs.
local ARITY = 3

local function tat_of(stored, now)
  if stored then
    local t = string.match(stored, '^(%d+)$')
    if t then
      return tonumber(t)
    end
  end
  return now
end

-- The reply and the state an arrival time of `tat` leaves.
local function settled(r, tat, now, interval, tolerance)
  local busy = tat
  if busy < now then
    busy = now
  end
  -- Clamped: a server clock that stepped back may give a `now` earlier
  -- than the one that set `tat`.
  local room = now + tolerance - busy
  if room < 0 then
    room = 0
  end
  r.remaining, r.reset = fdiv(room, interval), busy - now
  if r.reset > 0 then
    r.state, r.px = int(tat), ttl_ms(r.reset)
  end
  return r
end

local function decide(key, a, now, cost)
  local interval, capacity, period = tonumber(a[1]), tonumber(a[2]), tonumber(a[3])
  local tolerance = capacity * interval
  local stored = load(key)
  local tat = tat_of(stored, now)
  local r = {allowed = 0, retry = 0, stored = stored}
  if cost > capacity then
    r.retry = period
  else
    local base = tat
    if base < now then
      base = now
    end
    local new_tat = base + cost * interval
    if new_tat <= now + tolerance then
      r.allowed, tat = 1, new_tat
    else
      r.retry = new_tat - tolerance - now
    end
  end
  return settled(r, tat, now, interval, tolerance)
end

-- Moves the arrival time back by the hit's cost, not before now.
local function refund(key, a, now, cost)
  local interval, capacity = tonumber(a[1]), tonumber(a[2])
  local stored = load(key)
  local tat = tat_of(stored, now) - cost * interval
  if tat < now then
    tat = now
  end
  return settled({allowed = 1, retry = 0, stored = stored}, tat, now, interval, capacity * interval)
end
