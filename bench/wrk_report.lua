-- Shared by the benchmark's wrk scripts (loaded with dofile).
-- setup() numbers the threads; done() prints one machine-readable line,
--   BENCH_RESULT {...json...}
-- with the totals wrk also prints as text ("Non-2xx or 3xx responses" is
-- non_2xx), latency percentiles in microseconds, and the sum of the "stored"
-- counts the threads read from response bodies (batch script only).

local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local stored, stored_responses = 0, 0
  for _, thread in ipairs(threads) do
    stored = stored + (thread:get("stored") or 0)
    stored_responses = stored_responses + (thread:get("stored_responses") or 0)
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "non_2xx": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "stored": %d, "stored_responses": %d}\n',
    summary.requests, summary.duration, errors.status, errors.connect, errors.read,
    errors.write, errors.timeout, latency:percentile(50), latency:percentile(99),
    latency.max, stored, stored_responses))
end
