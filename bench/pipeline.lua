-- wrk script: send `depth` requests back to back on each connection (HTTP/1.1 pipelining).
-- Usage: wrk -s pipeline.lua <url> -- <depth> [method] [body]
local depth, method, body = 16, "GET", nil

function init(args)
   depth = tonumber(args[1] or "16")
   method = args[2] or "GET"
   body = args[3]
   local headers = {}
   if body then headers["Content-Type"] = "application/json" end
   local one = wrk.format(method, nil, headers, body)
   req = string.rep(one, depth)
end

function request()
   return req
end
