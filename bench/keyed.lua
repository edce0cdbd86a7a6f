-- wrk script: POST /api/v1/counter with a fresh Idempotency-Key per request (each counts once).
-- Usage: wrk -s keyed.lua <url>
-- Keys are "<thread>-<random>-<n>": unique per run and across wrk's threads.
local prefix
local n = 0

function init(args)
   math.randomseed(os.time() + math.floor(os.clock() * 1e6))
   prefix = string.format("%08x-", math.random(0, 0x7fffffff))
end

function request()
   n = n + 1
   return wrk.format("POST", "/api/v1/counter", {["Idempotency-Key"] = prefix .. n}, "")
end
