-- wrk script: POST /api/v1/counter, counting the answers by status (printed at the end).
-- Usage: wrk -s statuses.lua <url> -- [keyed]
-- With "keyed", each request carries a fresh Idempotency-Key (as keyed.lua).
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local keyed, prefix, n = false, "", 0
statuses = {}

function init(args)
   keyed = args[1] == "keyed"
   math.randomseed(os.time() + math.floor(os.clock() * 1e6))
   prefix = string.format("%08x-", math.random(0, 0x7fffffff))
end

function request()
   if not keyed then
      return wrk.format("POST", "/api/v1/counter", nil, "")
   end
   n = n + 1
   return wrk.format("POST", "/api/v1/counter", {["Idempotency-Key"] = prefix .. n}, "")
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local total = {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         total[status] = (total[status] or 0) + count
      end
   end
   local line = "statuses:"
   for status, count in pairs(total) do
      line = line .. string.format(" %d=%d", status, count)
   end
   local e = summary.errors
   io.write(line .. string.format(" socket_errors=%d timeouts_over_2s=%d\n",
      e.connect + e.read + e.write, e.timeout))
end
