-- wrk script: one chat turn per request. Each request starts a new conversation for a user of
-- its own, unless CONVERSATION is set (then every request continues that conversation).
-- At the end it prints one JSON line: latency percentiles, errors, the API overhead
-- (Server-Timing total minus agent) percentiles, and how many responses completed in each
-- wall-clock second (for a steady-state rate that leaves out the ramp and the cut-off end).
--
-- TOKEN sends `Authorization: Bearer TOKEN`; then every request is a new conversation of the
-- token's user (BENCH_USER): on /api/BENCH_USER/chat, or, with V1 set, on
-- /v1/chat/completions as the `openai` SDK sends it (model `todo`, the SDK's headers).
--
-- STAGGER_MS with CONNECTIONS_PER_THREAD spreads each connection's first request evenly over
-- that many milliseconds instead of sending them all in the same instant.
local threads = {}
local stagger_ms = tonumber(os.getenv("STAGGER_MS") or "")

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  overheads = {}
  statuses = {}
  conversation = os.getenv("CONVERSATION")
  user = os.getenv("BENCH_USER")
  message = os.getenv("MESSAGE") or "hello there"
  per_thread = tonumber(os.getenv("CONNECTIONS_PER_THREAD") or "1")
  token = os.getenv("TOKEN")
  v1 = os.getenv("V1")
  started = 0
  completed = {}
end

if stagger_ms then
  -- wrk asks before every request; only each connection's first one waits.
  function delay()
    if started >= per_thread then return 0 end
    started = started + 1
    return math.floor(stagger_ms * (started - 1) / per_thread)
  end
end

-- What the openai SDK (3.x, sync client) sends with a chat completion besides the body.
local sdk_headers = {
  ["Content-Type"] = "application/json", ["Accept"] = "application/json",
  ["User-Agent"] = "OpenAI/Python 3.54.0", ["X-Stainless-Lang"] = "python",
  ["X-Stainless-Package-Version"] = "3.54.0", ["X-Stainless-OS"] = "Linux",
  ["X-Stainless-Arch"] = "x64", ["X-Stainless-Runtime"] = "CPython",
  ["X-Stainless-Runtime-Version"] = "3.11.7", ["X-Stainless-Retry-Count"] = "0",
  ["X-Stainless-Read-Timeout"] = "600",
}

function request()
  counter = counter + 1
  local body, path
  if token and token ~= "" then
    if v1 and v1 ~= "" then
      local headers = {["Authorization"] = "Bearer " .. token}
      for name, value in pairs(sdk_headers) do headers[name] = value end
      body = '{"messages":[{"content":"' .. message .. '","role":"user"}],"model":"todo"}'
      return wrk.format("POST", "/v1/chat/completions", headers, body)
    end
    body = '{"message":"' .. message .. '"}'
    return wrk.format("POST", "/api/" .. user .. "/chat",
      {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, body)
  end
  if conversation and conversation ~= "" then
    body = '{"message":"' .. message .. '","conversation_id":"' .. conversation .. '"}'
    path = "/api/" .. user .. "/chat"
  else
    body = '{"message":"' .. message .. '"}'
    path = "/api/bench-" .. tid .. "-" .. counter .. "/chat"
  end
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local second = os.time()
  completed[second] = (completed[second] or 0) + 1
  local timing = headers["Server-Timing"] or headers["server-timing"]
  if timing then
    local agent = tonumber(timing:match("agent;dur=([%d%.]+)"))
    local total = tonumber(timing:match("total;dur=([%d%.]+)"))
    if agent and total then overheads[#overheads + 1] = total - agent end
  end
end

local function percentile(sorted, p)
  if #sorted == 0 then return nil end
  local index = math.max(1, math.ceil(#sorted * p / 100))
  return sorted[index]
end

function done(summary, latency, requests)
  local all = {}
  local codes = {}
  local seconds = {}
  for _, thread in ipairs(threads) do
    for second, count in pairs(thread:get("completed")) do
      seconds[second] = (seconds[second] or 0) + count
    end
    for _, value in ipairs(thread:get("overheads")) do all[#all + 1] = value end
    for code, count in pairs(thread:get("statuses")) do
      codes[tostring(code)] = (codes[tostring(code)] or 0) + count
    end
  end
  table.sort(all)
  local e = summary.errors
  local parts = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_s":%.3f', summary.duration / 1e6),
    string.format('"errors":%d', e.connect + e.read + e.write + e.timeout + e.status),
    string.format('"socket_errors":%d', e.connect + e.read + e.write + e.timeout),
    string.format('"p50_ms":%.2f', latency:percentile(50) / 1000),
    string.format('"p95_ms":%.2f', latency:percentile(95) / 1000),
    string.format('"p99_ms":%.2f', latency:percentile(99) / 1000),
    string.format('"overhead_p50_ms":%s', tostring(percentile(all, 50) or "null")),
    string.format('"overhead_p99_ms":%s', tostring(percentile(all, 99) or "null")),
  }
  local code_parts = {}
  for code, count in pairs(codes) do
    code_parts[#code_parts + 1] = string.format('"%s":%d', code, count)
  end
  parts[#parts + 1] = '"statuses":{' .. table.concat(code_parts, ",") .. '}'
  local second_parts = {}
  for second, count in pairs(seconds) do
    second_parts[#second_parts + 1] = string.format('"%d":%d', second, count)
  end
  parts[#parts + 1] = '"completed_per_second":{' .. table.concat(second_parts, ",") .. '}'
  io.write("WRK_JSON " .. "{" .. table.concat(parts, ",") .. "}\n")
end
