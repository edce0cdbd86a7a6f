-- wrk script: POST /get_value with keys drawn at random from a key file (one UUID a line).
-- Usage: wrk -s kv.lua <url> -- <keyfile> [depth]
local keys = {}
local depth = 1

function init(args)
   for line in io.lines(args[1]) do
      keys[#keys + 1] = line
   end
   depth = tonumber(args[2] or "1")
   math.randomseed(os.time() + (wrk.thread and 7 or 0))
end

function request()
   local out = {}
   for i = 1, depth do
      local body = '{"key":"' .. keys[math.random(#keys)] .. '"}'
      out[i] = wrk.format("POST", "/get_value", {["Content-Type"] = "application/json"}, body)
   end
   return table.concat(out)
end
