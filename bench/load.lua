-- wrk script for bench/bench.py: POSTs chat-completion bodies from a pool file, each made
-- unique by a 12-digit call number spliced over its placeholder (so no two stored bodies are
-- byte-identical), and prints a JSON summary line for the bench to parse.
--
-- Run: wrk -t1 -c64 -d10s -s bench/load.lua URL -- POOL_FILE FIRST_NUMBER
-- POOL_FILE holds one JSON body per line, each with one "@@@@@@@@@@@@" placeholder.

local PLACEHOLDER = "@@@@@@@@@@@@"
local heads, tails = {}, {}
local size, number = 0, 0

function init(args)
  -- wrk passes the URL as args[0] on some builds; take the last two arguments
  local pool_file, first = args[#args - 1], args[#args]
  local file = assert(io.open(pool_file, "rb"))
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer bench-not-a-real-key",
  }
  for body in file:read("*a"):gmatch("[^\n]+") do
    local at = assert(body:find(PLACEHOLDER, 1, true), "body without placeholder")
    -- the request line and headers (Content-Length included) are the same for every number
    local request = wrk.format("POST", nil, headers, body)
    local cut = #request - #body + at - 1
    size = size + 1
    heads[size] = request:sub(1, cut)
    tails[size] = request:sub(cut + #PLACEHOLDER + 1)
  end
  file:close()
  number = tonumber(first)
end

function request()
  number = number + 1
  local i = number % size + 1
  return heads[i] .. string.format("%012d", number) .. tails[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.mean
  ))
end
