-- traffik: helpers shared by every strategy script (prepended to each one;
-- driver.lua, appended, runs the script).
--
-- A strategy script defines ARITY (its numbers per rate) and, for one rate,
-- `decide(key, a, now, cost)` and `refund(key, a, now, cost, hit)`, where
-- `a` holds the rate's ARITY numbers (strings, in decimal). Both read the
-- key and return, without writing anything, {allowed (1/0), remaining,
-- reset (µs), retry (µs)} (numbers, or decimal strings where they may pass
-- 2^53), with `stored` (the key existed), and `state` and `px` (the value to
-- SET and its PX in milliseconds, or nil to delete the key) for the driver
-- to write when the decision commits (`keep`: nothing to write). A script whose state is not one
-- string sets `save` to its own writer.
--
-- Lua numbers are doubles, exact up to 2^53. Each script's everyday path
-- uses them directly: it runs only for quotas whose sums and products stay
-- under 2^53, but for one: the token bucket's refill product, which may pass
-- 2^53 only to be compared with a smaller number (rounding is monotone, so
-- the comparison holds; see token_bucket.lua). Divisions go through
-- math.fmod, which is exact too. The token bucket and the sliding window
-- counter take larger quotas through a second path on exact integers of
-- any size (bignum below); the Rust side refuses, for the other
-- strategies, quotas whose numbers could pass 2^53. Numbers are
-- written back with string.format('%d') (exact for any whole double below
-- 2^63) because Redis would format a Lua number with 14 significant digits,
-- too few for microsecond timestamps.
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
-- Exact integers for the quotas whose numbers can pass 2^53: arrays of
-- base-2^24 limbs, least significant first, without high zero limbs (zero
-- is {}), so that every limb sum and product stays far below 2^53. Built
-- on demand (`local N = bignum()`): a script that does not need it pays
-- for one closure.
local function bignum()
  local B = 16777216
  local fmod, floor = math.fmod, math.floor
  local N = {}
  local function trim(a)
    local n = #a
    while n > 0 and a[n] == 0 do
      a[n] = nil
      n = n - 1
    end
    return a
  end
  -- From a Lua number holding a whole number (exact at any size: math.fmod
  -- and division by 2^24 are).
  local function of(x)
    local a, n = {}, 0
    while x > 0 do
      local lo = fmod(x, B)
      n = n + 1
      a[n] = lo
      x = (x - lo) / B
    end
    return a
  end
  -- The Lua number nearest to `a`, give or take a few roundings (exact below
  -- 2^53).
  local function num(a)
    local x = 0
    for i = #a, 1, -1 do
      x = x * B + a[i]
    end
    return x
  end
  local function cmp(a, b)
    if #a ~= #b then
      return #a < #b and -1 or 1
    end
    for i = #a, 1, -1 do
      if a[i] ~= b[i] then
        return a[i] < b[i] and -1 or 1
      end
    end
    return 0
  end
  local function add(a, b)
    local c, carry = {}, 0
    local n = #a
    if #b > n then
      n = #b
    end
    for i = 1, n do
      local s = (a[i] or 0) + (b[i] or 0) + carry
      if s >= B then
        c[i], carry = s - B, 1
      else
        c[i], carry = s, 0
      end
    end
    if carry > 0 then
      c[n + 1] = carry
    end
    return c
  end
  -- a - b, for a >= b.
  local function sub(a, b)
    local c, borrow = {}, 0
    for i = 1, #a do
      local s = a[i] - (b[i] or 0) - borrow
      if s < 0 then
        c[i], borrow = s + B, 1
      else
        c[i], borrow = s, 0
      end
    end
    return trim(c)
  end
  local function mul(a, b)
    local na, nb = #a, #b
    if na == 0 or nb == 0 then
      return {}
    end
    local c = {}
    for i = 1, na + nb do
      c[i] = 0
    end
    for i = 1, na do
      local ai, carry = a[i], 0
      for j = 1, nb do
        -- Below 2^24 + 2^48 + 2^25: exact.
        local t = c[i + j - 1] + ai * b[j] + carry
        local lo = fmod(t, B)
        c[i + j - 1] = lo
        carry = (t - lo) / B
      end
      c[i + nb] = carry
    end
    return trim(c)
  end
  -- Whether a < 2^53 (= 32 × 2^48): exact as a Lua number.
  local function small(a)
    return #a <= 2 or (#a == 3 and a[3] < 32)
  end
  -- floor(n / d) and n % d, for d > 0: a quotient estimated with doubles,
  -- scaled down so that it stays at most the true one (num's and the
  -- division's relative errors add up to less than 2^-49), taken off
  -- exactly, until the remainder is under 2^53, where math.fmod finishes
  -- exactly: at most three rounds for quotients under 2^64.
  local SAFE = 1 - 2 ^ -44
  local function divmod(n, d)
    local q, r = {}, n
    local dn = num(d)
    while cmp(r, d) >= 0 do
      if small(r) then
        -- r, and d ≤ r, are exact as Lua numbers.
        local x = num(r)
        local m = fmod(x, dn)
        return add(q, of((x - m) / dn)), of(m)
      end
      local e = floor(num(r) / dn * SAFE)
      if e < 1 then
        e = 1
      end
      e = of(e)
      local taken = mul(e, d)
      if cmp(taken, r) > 0 then
        error('traffik: inexact quotient estimate')
      end
      q, r = add(q, e), sub(r, taken)
    end
    return q, r
  end
  -- ceil(n / d), for d > 0.
  local function cdiv(n, d)
    local q, r = divmod(n, d)
    if #r > 0 then
      q = add(q, { 1 })
    end
    return q
  end
  local TEN = { 10, 100, 1000, 10000, 100000, 1000000, 10000000 }
  -- From a string of decimal digits, seven at a time.
  local function parse(s)
    local a, len = {}, #s
    if len <= 15 then
      -- Under 10^15 < 2^53: exact as a Lua number.
      return of(tonumber(s))
    end
    local i, j = 1, len % 7
    if j == 0 then
      j = 7
    end
    while i <= len do
      local m, carry = TEN[j - i + 1], tonumber(string.sub(s, i, j))
      for k = 1, #a do
        local t = a[k] * m + carry
        local lo = fmod(t, B)
        a[k] = lo
        carry = (t - lo) / B
      end
      while carry > 0 do
        local lo = fmod(carry, B)
        a[#a + 1] = lo
        carry = (carry - lo) / B
      end
      i, j = j + 1, j + 7
    end
    return trim(a)
  end
  -- Decimal digits, seven at a time.
  local function str(a)
    if small(a) then
      return string.format('%d', num(a))
    end
    if #a == 3 then
      -- Under 2^72: a = x × 2^24 + a[1] with x < 2^48, split at 10^8 (every
      -- step under 2^53).
      local x = a[3] * B + a[2]
      local xm = fmod(x, 100000000)
      local t = xm * B + a[1]
      local lo = fmod(t, 100000000)
      return string.format('%d%08d', (x - xm) / 100000000 * B + (t - lo) / 100000000, lo)
    end
    local q, parts = {}, {}
    for i = 1, #a do
      q[i] = a[i]
    end
    while #q > 0 do
      local r = 0
      for i = #q, 1, -1 do
        local t = r * B + q[i]
        r = fmod(t, 10000000)
        q[i] = (t - r) / 10000000
      end
      trim(q)
      parts[#parts + 1] = r
    end
    local s = string.format('%d', parts[#parts])
    for i = #parts - 1, 1, -1 do
      s = s .. string.format('%07d', parts[i])
    end
    return s
  end
  N.of, N.num, N.cmp, N.add, N.sub, N.mul = of, num, cmp, add, sub, mul
  N.divmod, N.cdiv, N.parse, N.str = divmod, cdiv, parse, str
  return N
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
-- The decision's time, returned first: a refund of the hit names it.
local at = now
-- Reads a key's string state.
local function load(key)
  return redis.call('GET', key)
end
-- Writes what a committed decision leaves: SET the state, or DEL the key
-- once its state is equivalent to a fresh one.
local save = function(key, r)
  if r.keep then
    return
  end
  if r.state then
    redis.call('SET', key, r.state, 'PX', r.px)
  elseif r.stored then
    redis.call('DEL', key)
  end
end
