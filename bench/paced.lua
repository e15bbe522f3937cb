-- bench/ingest.lua at a steady pace instead of as fast as the service
-- answers: each connection waits `pause` ms (given after the file base,
-- `-- <base> <pause>`) before each request, so C connections offer about
-- C * 1000 / pause callbacks a second, below saturation, as production
-- load is. Latency is measured from the moment a request is written, so it
-- does not include the pause. Used by bench/prune (RATE=...).
dofile("bench/ingest.lua")

local ingest_init = init

function init(args)
  ingest_init(args)
  pause = tonumber(args[2]) or 0
end

function delay()
  return pause
end
