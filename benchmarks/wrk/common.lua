-- Shared by the scenario scripts: page-view bodies with unique event ids, and a done() hook that
-- prints wrk's summary as one JSON line prefixed with "BENCH_JSON " for benchmarks/harness/wrk.py.
--
-- Environment: SITE_KEY (ingest key), RUN_ID (8 hex digits, unique per wrk run), BATCH_SIZE (views
-- per batch request), EVENT_IDS ("0" to send views without event ids).

local site_key = os.getenv("SITE_KEY") or "missing-site-key-0000"
local run_id = os.getenv("RUN_ID") or "00000000"
local with_ids = os.getenv("EVENT_IDS") ~= "0"
local counter = 0
local thread_no = 0
local threads = {}

USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
BATCH_SIZE = tonumber(os.getenv("BATCH_SIZE") or "500")

function setup(thread)
  thread_no = thread_no + 1
  thread:set("thread_id", thread_no)
  table.insert(threads, thread)
end

-- One page view as JSON: the URL and event id change with every view.
function view_json()
  counter = counter + 1
  local id = ""
  if with_ids then
    id = string.format(',"event_id":"%s-%04x-4000-8000-%012x"', run_id, thread_id or 0, counter)
  end
  return string.format(
    '{"site_key":"%s","url":"https://bench.example/p/%d?utm_source=bench","referrer":"https://www.google.com/",'
      .. '"title":"Bench page","screen_width":1440%s}',
    site_key, counter % 100, id
  )
end

function json_headers()
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["User-Agent"] = USER_AGENT
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"errors_status":%d,"errors_connect":%d,'
      .. '"errors_read":%d,"errors_write":%d,"errors_timeout":%d,"latency_p50_us":%d,"latency_p90_us":%d,'
      .. '"latency_p99_us":%d,"latency_max_us":%d,"latency_mean_us":%.1f}\n',
    summary.duration, summary.requests, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean
  ))
end
