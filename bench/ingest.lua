-- wrk script for bench/ingest: each request is a distinct pre-generated,
-- signed callback; thread i reads only its own file `<base>.<i>.tsv` (base
-- given after `--`), one `sign<TAB>body` a line, and sends its lines in
-- order. Counts acknowledged answers (HTTP 200 with "code":0) and other
-- answers. No body is sent twice unless a file runs out (reported as
-- `wrapped`: bench/ingest then declares the run invalid).
--
-- The loss check: wrk 4 tells response() nothing about which request it
-- answers (no connection, no user data), and the service's answer does not
-- name the RequidId, so the acknowledged RequidIds cannot be listed one by
-- one. What is exact is the set sent: thread i sent the first `sent[i]`
-- lines of its file, and the acknowledged ones are among them (each answered
-- at most once, all distinct). bench/ingest reads those RequidIds from the
-- files after the run and checks that every one is stored as applied or
-- duplicate, which proves it for every acknowledged one. This costs one
-- counter per request and no I/O during the run; a stricter check (every
-- sent one, including the few still in flight when wrk stops) is the price.
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  -- The whole file as one string, split line by line as requests go out:
  -- wrk runs the first thread while it runs init() for the next one, so a
  -- slow init (splitting 100k lines into tables took half a second) would
  -- let the first thread send alone, outside the measured time.
  local f = assert(io.open(args[1] .. "." .. id .. ".tsv", "rb"))
  data = f:read("*a")
  f:close()
  pos = 1
  sent, acked, failed, wrapped = 0, 0, 0, 0
  reusing = false
  -- wrk calls request() once on the first thread before the run, only to
  -- check that the request parses (script_verify_request), and never sends
  -- it: that call must not use up a line, or the check would expect its
  -- RequidId stored. (Were it sent, it would be sent twice: a duplicate,
  -- which the check accepts.)
  verifying = id == 0
end

function request()
  if pos > #data then
    pos, reusing = 1, true
  end
  local tab = data:find("\t", pos, true)
  local nl = data:find("\n", tab, true) or #data + 1
  local sign, body = data:sub(pos, tab - 1), data:sub(tab + 1, nl - 1)
  if verifying then
    verifying = false
  else
    pos = nl + 1
    sent = sent + 1
    if reusing then
      wrapped = wrapped + 1
    end
  end
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["sign"] = sign}, body)
end

function response(status, headers, body)
  if status == 200 and body:find('"code":0', 1, true) then
    acked = acked + 1
  else
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  local a, f, w, s = 0, 0, 0, {}
  for _, t in ipairs(threads) do
    a = a + t:get("acked")
    f = f + t:get("failed")
    w = w + t:get("wrapped")
    s[#s + 1] = string.format("%d", t:get("sent"))
  end
  local e = summary.errors
  io.write(string.format("RESULT acked=%d failed=%d wrapped=%d sent=%s socket_errors=%d seconds=%.3f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
    a, f, w, table.concat(s, ","), e.connect + e.read + e.write, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
