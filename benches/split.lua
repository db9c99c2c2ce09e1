-- wrk script: each request carries one of 10,000 user ids in the cookie "uid" (as a fleet of
-- real users would); counts the answers and the non-200s. Pass "close" as the script's argument
-- (wrk ... -s split.lua URL -- close) to open a new connection for every request.
local threads = {}
function setup(thread) table.insert(threads, thread) end

n, total, errors = 0, 0, 0
local extra = {}
function init(args)
  if args[1] == "close" then extra["Connection"] = "close" end
end
function request()
  n = n + 1
  local headers = { ["Cookie"] = "uid=user" .. (n % 10000) }
  for k, v in pairs(extra) do headers[k] = v end
  return wrk.format("GET", "/", headers)
end
function response(status, headers, body)
  total = total + 1
  if status ~= 200 then errors = errors + 1 end
end
function done(summary, latency, requests)
  local b, c = 0, 0
  for _, t in ipairs(threads) do b = b + t:get("total"); c = c + t:get("errors") end
  io.write(string.format("ANSWERS total=%d non200=%d\n", b, c))
end
