-- wrk script for balance-api bench's transfer workloads (wrk's Lua API: wrk.format, request,
-- response, setup, done; https://github.com/wg/wrk/blob/master/SCRIPTING). Configured by the
-- environment:
--   WORKLOAD       credits: POST /api/users/{id}/credit of 1 unit to a random user among ACCOUNTS
--                         users from FIRST_USER (the bench's spread workload)
--                  transfers: POST /api/transfers of 1 unit between two random accounts
--                  holds: a hold of 1 unit between two random accounts, then (its answer read) its
--                         post: each connection alternates the two
--                  bulk: POST /api/transfers/batch of BATCH_SIZE random transfers of 1 unit
--   FIRST_ACCOUNT  the first of ACCOUNTS consecutive account ids to pick from
--   ACCOUNTS       how many
--   FIRST_USER     credits only: the first of ACCOUNTS consecutive user ids to pick from
--   BATCH_SIZE     items per bulk batch (bulk only)
--   AMOUNT_MAX     transfers: each moves a random amount from 1 to AMOUNT_MAX minor units (default 1)
--   REPORT         where done() writes the run's JSON report
--   API_KEY        sent as Authorization: Bearer API_KEY when set (a service with REQUIRE_API_KEY)
-- Bodies are built from a seeded random generator per thread, so runs are reproducible.

local workload = os.getenv("WORKLOAD") or "transfers"
local first = tonumber(os.getenv("FIRST_ACCOUNT") or "1")
local first_user = tonumber(os.getenv("FIRST_USER") or "1")
local accounts = tonumber(os.getenv("ACCOUNTS") or "50")
local batch_size = tonumber(os.getenv("BATCH_SIZE") or "1000")
local amount_max = tonumber(os.getenv("AMOUNT_MAX") or "1")
local headers = {["Content-Type"] = "application/json"}
local api_key = os.getenv("API_KEY")
if api_key and api_key ~= "" then headers["Authorization"] = "Bearer " .. api_key end

local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

statuses = {}  -- global: done() reads each thread's with thread:get
local holds = {}  -- ids of holds made and not yet posted, by this thread

function init(args)
  math.randomseed(7919 * id)
end

local function pair()
  local from = first + math.random(0, accounts - 1)
  local to = first + math.random(0, accounts - 2)
  if to >= from then to = to + 1 end
  return from, to
end

local function transfer_json(pending)
  local from, to = pair()
  return string.format('{"fromAccountId": %d, "toAccountId": %d, "amount": %d%s}', from, to,
                       math.random(1, amount_max), pending and ', "pending": true' or "")
end

local credit_body = '{"amount": 1}'

function request()
  if workload == "credits" then  -- every request its own random user: h2load's -i would walk every
    -- connection through one list from its start, in step with the others
    return wrk.format("POST", "/api/users/" .. (first_user + math.random(0, accounts - 1)) .. "/credit", headers,
                      credit_body)
  end
  if workload == "bulk" then
    local items = {}
    for i = 1, batch_size do items[i] = transfer_json(false) end
    return wrk.format("POST", "/api/transfers/batch", headers,
                      '{"atomic": false, "transfers": [' .. table.concat(items, ",") .. ']}')
  end
  if workload == "holds" and #holds > 0 then
    return wrk.format("POST", "/api/transfers/" .. table.remove(holds) .. "/post", headers, "{}")
  end
  return wrk.format("POST", "/api/transfers", headers, transfer_json(workload == "holds"))
end

function response(status, response_headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if workload == "holds" and status == 201 then
    local made = body:match('"transferId":%s*(%d+)')
    if made then table.insert(holds, made) end
  end
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(counts) do table.insert(parts, string.format('"%d": %d', status, count)) end
  local errors = summary.errors
  local report = io.open(os.getenv("REPORT") or "wrk-report.json", "w")
  report:write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "statuses": {%s}, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), table.concat(parts, ", "),
    errors.connect, errors.read, errors.write, errors.timeout))
  report:close()
end
