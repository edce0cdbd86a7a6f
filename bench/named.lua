-- wrk script: named counters (issue 20), counting the answers by status.
-- Usage: wrk -s named.lua <url> -- <mode> [names]
--   random        POST /api/v1/counters/c<i>, i drawn at random from 0..names-1
--   hot           POST /api/v1/counters/hot (one name)
--   keyed         as random, each request with a fresh Idempotency-Key (as keyed.lua)
--   get           GET /api/v1/counters/c<i>, i at random
--   single        POST /api/v1/counter (the single counter: the baseline, same script)
--   single-keyed  POST /api/v1/counter with a fresh Idempotency-Key
-- names defaults to $NAMES, else 10000. The URL's path is ignored: each mode sets its own.
-- At the end it prints "statuses: 200=N ..." and "non-200: N" (bench/run.sh and bench/redis.sh
-- flag a row with any). Every mode has the same response() hook, so wrk pays the same for it
-- in every row: compare named rows with `single`, not with pipeline.lua's rows.
-- Requests without a key are formatted once in init() (a pool of random picks, cycled, as
-- kv.lua), so wrk spends its CPU on sending; keyed requests are formatted each time, as in
-- keyed.lua.
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local mode, names = "random", 10000
local pool, next_req = {}, 0
local prefix, n = "", 0
statuses = {}

local function name_path()
   return "/api/v1/counters/c" .. math.random(0, names - 1)
end

function init(args)
   mode = args[1] or "random"
   names = tonumber(args[2] or os.getenv("NAMES") or "10000")
   math.randomseed(os.time() + math.floor(os.clock() * 1e6))
   prefix = string.format("%08x-", math.random(0, 0x7fffffff))
   if mode == "random" or mode == "get" then
      local method = mode == "get" and "GET" or "POST"
      -- Twice as many picks as names (at least 4,096), so the pool touches nearly every name.
      for i = 1, math.max(4096, 2 * names) do
         pool[i] = wrk.format(method, name_path(), nil, nil)
      end
   elseif mode == "hot" then
      pool[1] = wrk.format("POST", "/api/v1/counters/hot", nil, nil)
   elseif mode == "single" then
      pool[1] = wrk.format("POST", "/api/v1/counter", nil, nil)
   elseif mode ~= "keyed" and mode ~= "single-keyed" then
      error("named.lua: unknown mode " .. mode)
   end
end

function request()
   if mode == "keyed" then
      n = n + 1
      return wrk.format("POST", name_path(), {["Idempotency-Key"] = prefix .. n}, "")
   elseif mode == "single-keyed" then
      n = n + 1
      return wrk.format("POST", "/api/v1/counter", {["Idempotency-Key"] = prefix .. n}, "")
   end
   next_req = next_req % #pool + 1
   return pool[next_req]
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local total, other = {}, 0
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         total[status] = (total[status] or 0) + count
      end
   end
   local line = "statuses:"
   for status, count in pairs(total) do
      line = line .. string.format(" %d=%d", status, count)
      if status ~= 200 then other = other + count end
   end
   io.write(line .. "\n")
   io.write(string.format("non-200: %d\n", other))
end
