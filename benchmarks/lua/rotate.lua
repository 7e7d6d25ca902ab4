-- wrk script: POSTs pre-signed Jira deliveries, rotating the bodies, each request with its own
-- X-Atlassian-Webhook-Identifier (so none is taken for a duplicate). Usage:
--   wrk -s rotate.lua URL -- BODIES_FILE RUN_TAG [THREADS]
-- BODIES_FILE: one delivery a line, "<X-Hub-Signature>\t<body>". At the end, prints one line
-- "WRK_JSON {...}" with requests, duration, status counts, socket errors and latency percentiles (µs).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  sigs, bodies = {}, {}
  for line in io.lines(args[1]) do
    local tab = line:find("\t", 1, true)
    sigs[#sigs + 1] = line:sub(1, tab - 1)
    bodies[#bodies + 1] = line:sub(tab + 1)
  end
  prefix = (args[2] or "run") .. "-t" .. tostring(tid) .. "-"
  -- Each thread sends its own bodies (every nthreads-th), so that no two threads send one body
  -- at once: the same body within the receiver's replay window is a replay (200 duplicate).
  nthreads = tonumber(args[3] or "1")
  idx = tid - nthreads
  counter = 0
  statuses = {}
end

function request()
  counter = counter + 1
  idx = idx + nthreads
  if idx > #bodies then idx = tid end
  return wrk.format("POST", "/webhooks/jira", {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "Atlassian Webhook HTTP Client",
    ["X-Hub-Signature"] = sigs[idx],
    ["X-Atlassian-Webhook-Identifier"] = prefix .. counter,
    ["X-Atlassian-Webhook-Retry"] = "0",
    ["X-Atlassian-Webhook-Flow"] = "Primary",
  }, bodies[idx])
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for k, v in pairs(s) do counts[k] = (counts[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(counts) do parts[#parts + 1] = string.format('"%s":%d', k, v) end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"statuses":{%s},"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, table.concat(parts, ","), e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
