-- wrk script for target 2: POST /api/analytics/batch with BATCH_SIZE events each.
--   wrk ... -s bench/batch.lua http://127.0.0.1:PORT/api/analytics/batch -- TENANT_ID BATCH_SIZE
-- Bodies mix the landing event types and differ per request (~100 bytes an
-- event, ~50 KB for 500). A 2xx answer's "stored" count is summed per thread.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "wrk_report.lua")

local tenant, size, counter = 1, 500, 0
stored, stored_responses = 0, 0

local kinds = {
  "pageview", "pageview", "pageview", "pageview", "pageview", "pageview",
  "time_on_page", "click_whatsapp", "product_click", "click_call",
}
local headers = { ["Content-Type"] = "application/json", ["User-Agent"] = "bench-batch" }

function init(args)
  tenant = tonumber(args[1]) or tenant
  size = tonumber(args[2]) or size
end

local function event(kind, n)
  local extra = ""
  if kind == "time_on_page" then
    extra = string.format(', "seconds": %d', 5 + n % 600)
  elseif kind == "product_click" then
    extra = string.format(', "product_id": %d', 1 + n % 40)
  end
  return string.format(
    '{"event_type": "%s", "metadata": {"path": "/productos/%d", "batch": %d, "seq": %d%s}}',
    kind, n % 97, counter, n, extra)
end

function request()
  counter = counter + 1
  local events = {}
  for n = 1, size do
    events[n] = event(kinds[(n + counter + id) % #kinds + 1], n)
  end
  local body = string.format(
    '{"tenant_id": %d, "events": [%s]}', tenant, table.concat(events, ", "))
  return wrk.format("POST", nil, headers, body)
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    local count = body:match('"stored"%s*:%s*(%d+)')
    if count then
      stored = stored + tonumber(count)
      stored_responses = stored_responses + 1
    end
  end
end
