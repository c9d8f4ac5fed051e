-- traffik: the driver (appended to every strategy script).
--
-- KEYS[i]: the state key of rate i (every key in one hash slot). ARGV[1]:
-- 'hit', 'peek' or 'refund'; ARGV[2]: the cost; ARGV[3]: for a refund, the
-- time of the hit given back (else 0); then ARITY numbers per rate.
--
-- Every rate is decided first, nothing written; then a hit that every rate
-- allows, or a refund, writes each rate's state. A peek, and a hit that a
-- rate refuses, write nothing: they change no counter.
--
-- Returns {at, then allowed, remaining, reset_after_us, retry_after_us for
-- each rate}.
local op, cost, hit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local results, args, commit = {}, {}, op ~= 'peek'
for i = 1, #KEYS do
  local a = {}
  for j = 1, ARITY do
    a[j] = ARGV[3 + (i - 1) * ARITY + j]
  end
  args[i] = a
  local r
  if op == 'refund' then
    r = refund(KEYS[i], a, now, cost, hit)
  else
    r = decide(KEYS[i], a, now, cost)
    if r.allowed ~= 1 then
      commit = false
    end
  end
  results[i] = r
end
-- A refused hit counts on no rate: the rates that would have allowed it
-- report what they still hold (their decision at cost 0).
if op == 'hit' and not commit then
  for i = 1, #KEYS do
    if results[i].allowed == 1 then
      results[i] = decide(KEYS[i], args[i], now, 0)
    end
  end
end
local reply = {at}
for i = 1, #KEYS do
  local r = results[i]
  if commit then
    save(KEYS[i], r)
  end
  reply[#reply + 1] = r.allowed
  reply[#reply + 1] = r.remaining
  reply[#reply + 1] = r.reset
  reply[#reply + 1] = r.retry
end
return reply
