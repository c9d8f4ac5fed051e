-- traffik: helpers shared by every strategy script (prepended to each one).
--
-- KEYS[1]: the state key. ARGV[1]: '1' to record the hit, '0' to peek (no
-- write at all). The other ARGV are the strategy's integers, formatted in
-- decimal. Every script returns {allowed (1/0), remaining, reset_after_us,
-- retry_after_us}.
--
-- Lua numbers are doubles: the Rust side rejects quotas whose numbers could
-- take an intermediate value past 2^53, so every sum and product below is
-- exact, but for one: the token bucket's refill product, which may pass
-- 2^53 only to be compared with a smaller number (rounding is monotone, so
-- the comparison holds; see token_bucket.lua). Divisions go through
-- math.fmod, which is exact too. Numbers are
-- written back with string.format('%d') because Redis would format a Lua
-- number with 14 significant digits, too few for microsecond timestamps.
local function fdiv(a, b)
  return (a - math.fmod(a, b)) / b
end
local function cdiv(a, b)
  local r = math.fmod(a, b)
  if r > 0 then
    return (a - r) / b + 1
  end
  return (a - r) / b
end
local function int(n)
  return string.format('%d', n)
end
-- PEXPIRE milliseconds for a state equivalent to a fresh one `us` from now:
-- rounded up, plus 1 ms for the server's millisecond expiry clock.
local function ttl_ms(us)
  return int(cdiv(us, 1000) + 1)
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local key = KEYS[1]
local record = ARGV[1] == '1'
