-- wrk script for target 1: single events, POST /api/analytics/track.
--   wrk ... -s bench/track.lua http://127.0.0.1:PORT/api/analytics/track -- TENANT_ID [keyed]
-- Each request has its own body (a counter and the thread in metadata) and
-- one of 1000 user agents, so neither bodies nor visitor hashes repeat much.
-- With "keyed", each also carries an idempotency key of its own, as the snippet's do
-- (the run's start second in it: a warm-up's keys are not the measured run's).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "wrk_report.lua")

local tenant, counter, keyed, started = 1, 0, false, os.time()

function init(args)
  tenant = tonumber(args[1]) or tenant
  keyed = args[2] == "keyed"
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"tenant_id": %d, "event_type": "pageview", '
      .. '"metadata": {"path": "/productos", "n": %d, "thread": %d}}',
    tenant, counter, id)
  if keyed then
    local key = string.format("ta-%d-%d-%d", started, id, counter)
    body = body:sub(1, -2) .. ', "idempotency_key": "' .. key .. '"}'
  end
  local headers = {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "bench-agent/" .. (counter % 1000),
  }
  return wrk.format("POST", nil, headers, body)
end
