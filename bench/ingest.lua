-- wrk script for bench/ingest: each request is a distinct pre-generated,
-- signed callback; thread i reads only its own file `<base>.<i>.tsv` (base
-- given after `--`), one `sign<TAB>body` a line. Counts acknowledged answers
-- (HTTP 200 with "code":0). No body is sent twice unless a file runs out
-- (reported as `wrapped`).
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  signs, bodies = {}, {}
  for line in io.lines(args[1] .. "." .. id .. ".tsv") do
    local tab = line:find("\t", 1, true)
    signs[#signs + 1] = line:sub(1, tab - 1)
    bodies[#bodies + 1] = line:sub(tab + 1)
  end
  acked, failed, wrapped = 0, 0, 0
  counter = 1
end

function request()
  local i = counter
  if i > #bodies then
    wrapped = wrapped + 1
    i = ((i - 1) % #bodies) + 1
  end
  counter = counter + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["sign"] = signs[i]}, bodies[i])
end

function response(status, headers, body)
  if status == 200 and body:find('"code":0', 1, true) then
    acked = acked + 1
  else
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  local a, f, w = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("acked")
    f = f + t:get("failed")
    w = w + t:get("wrapped")
  end
  io.write(string.format("RESULT acked=%d failed=%d wrapped=%d seconds=%.3f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
    a, f, w, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
