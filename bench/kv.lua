-- wrk script: POST /get_value with keys drawn at random from a key file (one UUID a line).
-- Usage: wrk -s kv.lua <url> -- <keyfile> [depth]
-- Requests are formatted once in init() (4,096 random picks, cycled), so wrk spends its CPU
-- on sending rather than on building strings and the server, not wrk, is what is measured.
local pool = {}
local next_req = 0

function init(args)
   local keys = {}
   for line in io.lines(args[1]) do
      keys[#keys + 1] = line
   end
   local depth = tonumber(args[2] or "1")
   math.randomseed(os.time())
   for i = 1, 4096 do
      local batch = {}
      for j = 1, depth do
         local body = '{"key":"' .. keys[math.random(#keys)] .. '"}'
         batch[j] = wrk.format("POST", "/get_value", {["Content-Type"] = "application/json"}, body)
      end
      pool[i] = table.concat(batch)
   end
end

function request()
   next_req = next_req % #pool + 1
   return pool[next_req]
end
