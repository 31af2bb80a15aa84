-- wrk script for target 1: single events, POST /api/analytics/track.
--   wrk ... -s bench/track.lua http://127.0.0.1:PORT/api/analytics/track -- TENANT_ID
-- Each request has its own body (a counter and the thread in metadata) and
-- one of 1000 user agents, so neither bodies nor visitor hashes repeat much.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "wrk_report.lua")

local tenant, counter = 1, 0

function init(args)
  tenant = tonumber(args[1]) or tenant
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"tenant_id": %d, "event_type": "pageview", '
      .. '"metadata": {"path": "/productos", "n": %d, "thread": %d}}',
    tenant, counter, id)
  local headers = {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "bench-agent/" .. (counter % 1000),
  }
  return wrk.format("POST", nil, headers, body)
end
