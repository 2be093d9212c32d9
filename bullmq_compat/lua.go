package bullmq

import "github.com/redis/go-redis/v9"

// The scripts below are this package's own. They keep BullMQ 6.7's Redis
// layout (keys, hash fields, scores, markers, stream events) so that Node
// producers, workers and QueueEvents interoperate with them (see the
// package documentation and the Node peers in interop/). Every script gets all queue keys in
// KEYS (in the order of the k* constants) and the job key prefix in
// ARGV[1]. Arguments are plain strings, so the scripts also run on
// miniredis (no cmsgpack). Numbers that go back to Redis are formatted with
// %.0f: Lua's default number formatting keeps only 14 digits, too few for
// delayed scores (due ms * 4096) and priority scores (priority * 2^32).

const luaPrelude = `
local rcall = redis.call
local K = {
  wait = KEYS[1], active = KEYS[2], prioritized = KEYS[3], delayed = KEYS[4],
  meta = KEYS[5], id = KEYS[6], events = KEYS[7], marker = KEYS[8], pc = KEYS[9],
  stalled = KEYS[10], limiter = KEYS[11], completed = KEYS[12], failed = KEYS[13],
  stalledCheck = KEYS[14], paused = KEYS[15], rep = KEYS[16], waitingChildren = KEYS[17]
}
local P = ARGV[1]

local function num(x) return string.format("%.0f", x) end

local function maxEvents()
  local n = rcall("HGET", K.meta, "opts.maxLenEvents")
  if not n then
    n = 10000
    rcall("HSET", K.meta, "opts.maxLenEvents", n)
  end
  return tonumber(n)
end

local function isPausedOrMaxed()
  local m = rcall("HMGET", K.meta, "paused", "concurrency")
  if m[1] then return true end
  if m[2] and rcall("LLEN", K.active) >= tonumber(m[2]) then return true end
  return false
end

local function markReady()
  if not isPausedOrMaxed() then rcall("ZADD", K.marker, 0, "0") end
end

local function nextDelayedDue()
  local r = rcall("ZRANGE", K.delayed, 0, 0, "WITHSCORES")
  if r[2] then return math.floor(tonumber(r[2]) / 4096) end
  return nil
end

local function markDelayed()
  local t = nextDelayedDue()
  if t then rcall("ZADD", K.marker, num(t), "1") end
end

local function priorityScore(priority)
  local c = rcall("INCR", K.pc)
  return num(priority * 4294967296 + (c % 4294967296))
end

-- enqueue puts a ready job into wait (priority 0) or prioritized (any other
-- priority: Node accepts negative ones, which sort first).
-- front: the processing end of wait (RPUSH).
local function enqueue(id, priority, front)
  if priority ~= 0 then
    rcall("ZADD", K.prioritized, priorityScore(priority), id)
  elseif front then
    rcall("RPUSH", K.wait, id)
  else
    rcall("LPUSH", K.wait, id)
  end
end

local function delayedScore(due)
  local lo = due * 4096
  local hi = (due + 1) * 4096 - 1
  local r = rcall("ZREVRANGEBYSCORE", K.delayed, num(hi), num(lo), "WITHSCORES", "LIMIT", 0, 1)
  if r[2] then
    local cur = tonumber(r[2])
    if cur >= hi then return hi end
    return cur + 1
  end
  return lo
end

local function promoteDelayed(now)
  local ids = rcall("ZRANGEBYSCORE", K.delayed, 0, num((now + 1) * 4096 - 1), "LIMIT", 0, 1000)
  if #ids == 0 then return end
  rcall("ZREM", K.delayed, unpack(ids))
  for _, id in ipairs(ids) do
    local jk = P .. id
    local pr = tonumber(rcall("HGET", jk, "priority")) or 0
    enqueue(id, pr, false)
    rcall("XADD", K.events, "*", "event", "waiting", "jobId", id, "prev", "delayed")
    rcall("HSET", jk, "delay", 0)
  end
  markReady()
end

local function decodeOpts(raw)
  if raw then
    local ok, o = pcall(cjson.decode, raw)
    if ok and type(o) == "table" then return o end
  end
  return {}
end

local function jobOpts(jk)
  return decodeOpts(rcall("HGET", jk, "opts"))
end

local function removeJobKeys(jk)
  rcall("DEL", jk, jk .. ":logs", jk .. ":dependencies", jk .. ":processed",
    jk .. ":failed", jk .. ":unsuccessful", jk .. ":lock")
end

-- checkLock: 0 when token owns the job (and releases the lock), else -2/-6.
local function releaseLock(jk, id, token)
  if token == "0" then return 0 end
  local lk = jk .. ":lock"
  local cur = rcall("GET", lk)
  if not cur then return -2 end
  if cur ~= token then return -6 end
  rcall("DEL", lk)
  rcall("SREM", K.stalled, id)
  return 0
end

-- Flow parents may live in another queue (same slot on a cluster): these
-- helpers take the parent queue's key prefix pq ("bull:parents").
local function pausedOrMaxedOf(pq)
  local m = rcall("HMGET", pq .. ":meta", "paused", "concurrency")
  if m[1] then return true end
  if m[2] and rcall("LLEN", pq .. ":active") >= tonumber(m[2]) then return true end
  return false
end

local function moveParentToWait(pq, pk, pid, now)
  local a = rcall("HMGET", pk, "priority", "delay")
  local pr, delay = tonumber(a[1]) or 0, tonumber(a[2]) or 0
  if delay > 0 then
    local due = now + delay
    rcall("ZADD", pq .. ":delayed", num(due * 4096), pid)
    rcall("XADD", pq .. ":events", "*", "event", "delayed", "jobId", pid, "delay", num(due))
    local r = rcall("ZRANGE", pq .. ":delayed", 0, 0, "WITHSCORES")
    if r[2] then rcall("ZADD", pq .. ":marker", num(math.floor(tonumber(r[2]) / 4096)), "1") end
    return
  end
  local blocked = pausedOrMaxedOf(pq)
  if pr == 0 then
    rcall("RPUSH", pq .. ":wait", pid)
  else
    local c = rcall("INCR", pq .. ":pc")
    rcall("ZADD", pq .. ":prioritized", num(pr * 4294967296 + (c % 4294967296)), pid)
  end
  if not blocked then rcall("ZADD", pq .. ":marker", 0, "0") end
  rcall("XADD", pq .. ":events", "*", "event", "waiting", "jobId", pid, "prev", "waiting-children")
end

local function moveParentIfWaitingChildren(pq, pk, pid, now)
  if rcall("EXISTS", pk) == 1 and rcall("ZSCORE", pq .. ":waiting-children", pid) then
    rcall("ZREM", pq .. ":waiting-children", pid)
    moveParentToWait(pq, pk, pid, now)
  end
end

-- childFinished does the parent bookkeeping of a finished flow child jk.
local function childFinished(jk, a, failed, value, now)
  if not a[1] and not a[2] then return end
  local pd = {}
  if a[2] then
    local ok, d = pcall(cjson.decode, a[2])
    if ok and type(d) == "table" then pd = d end
  end
  local pid, pq, pk = pd["id"], pd["queueKey"], a[1]
  if pk and not pid then
    pid = string.match(pk, ".*:(.*)")
    pq = string.sub(pk, 1, #pk - #pid - 1)
  end
  if not pid or not pq then return end
  pk = pk or (pq .. ":" .. pid)
  local deps = pk .. ":dependencies"
  if not failed then
    if rcall("SREM", deps, jk) == 1 then
      rcall("HSET", pk .. ":processed", jk, value)
      if rcall("SCARD", deps) == 0 then moveParentIfWaitingChildren(pq, pk, pid, now) end
    end
    return
  end
  if pd["fpof"] then
    if rcall("SREM", deps, jk) == 1 then
      rcall("ZADD", pk .. ":unsuccessful", now, jk)
      if rcall("EXISTS", pk) == 1 then
        local from
        if rcall("ZSCORE", pq .. ":waiting-children", pid) then
          from = pq .. ":waiting-children"
        elseif rcall("ZSCORE", pq .. ":delayed", pid) then
          from = pq .. ":delayed"
          rcall("HSET", pk, "delay", 0)
        end
        if from then
          rcall("ZREM", from, pid)
          rcall("HSET", pk, "defa", "child " .. jk .. " failed")
          moveParentToWait(pq, pk, pid, now)
        elseif not rcall("ZSCORE", pq .. ":failed", pid) then
          rcall("HSET", pk, "defa", "child " .. jk .. " failed")
        end
      end
    end
  elseif pd["cpof"] then
    if rcall("SREM", deps, jk) == 1 then
      rcall("HSET", pk .. ":failed", jk, value)
      moveParentIfWaitingChildren(pq, pk, pid, now)
    end
  elseif pd["idof"] or pd["rdof"] then
    if rcall("SREM", deps, jk) == 1 then
      if rcall("SCARD", deps) == 0 then moveParentIfWaitingChildren(pq, pk, pid, now) end
      if pd["idof"] then rcall("HSET", pk .. ":failed", jk, value) end
    end
  end
end

-- fetch moves the next job into active: {fields, id, limitDelay, delayUntil}.
local function fetch(now, token, lockMs, limMax, limDur, worker)
  promoteDelayed(now)
  local m = rcall("HMGET", K.meta, "paused", "concurrency", "max", "duration")
  local max = tonumber(m[3]) or limMax
  local dur = tonumber(m[4]) or limDur
  if max > 0 then
    local n = tonumber(rcall("GET", K.limiter) or "0")
    if n >= max then
      local ttl = rcall("PTTL", K.limiter)
      -- In the key's last millisecond PTTL is 0: end the window now, as
      -- Node does, so the job taken below starts a new one (INCR to 1).
      if ttl == 0 then rcall("DEL", K.limiter) end
      if ttl > 0 then return {0, 0, ttl, 0} end
    end
  end
  if m[1] then return {0, 0, 0, 0} end
  if m[2] and rcall("LLEN", K.active) >= tonumber(m[2]) then return {0, 0, 0, 0} end
  local id = rcall("RPOPLPUSH", K.wait, K.active)
  if id and string.sub(id, 1, 2) == "0:" then
    -- a legacy (pre-5.0) marker entry: discard it and take the next, as Node does
    rcall("LREM", K.active, 1, id)
    id = rcall("RPOPLPUSH", K.wait, K.active)
  end
  if not id then
    local z = rcall("ZPOPMIN", K.prioritized)
    if z[1] then
      id = z[1]
      rcall("LPUSH", K.active, id)
    else
      rcall("DEL", K.pc)
    end
  end
  if not id then
    return {0, 0, 0, nextDelayedDue() or 0}
  end
  local jk = P .. id
  if max > 0 and rcall("HEXISTS", jk, "defa") == 0 then
    local n = rcall("INCR", K.limiter)
    if n == 1 then
      local d = limDur
      if d <= 0 then d = dur end
      if d > 0 then rcall("PEXPIRE", K.limiter, d) end
    end
  end
  if token ~= "0" then rcall("SET", jk .. ":lock", token, "PX", lockMs) end
  rcall("XADD", K.events, "*", "event", "active", "jobId", id, "prev", "waiting")
  if worker ~= "" then
    rcall("HSET", jk, "processedOn", now, "pb", worker)
  else
    rcall("HSET", jk, "processedOn", now)
  end
  rcall("HINCRBY", jk, "ats", 1)
  rcall("ZADD", K.marker, 0, "0")
  return {rcall("HGETALL", jk), id, 0, 0}
end
`

// addScript adds one or more jobs atomically. ARGV[2] = maxDepth,
// ARGV[3] = number of jobs, then 14 arguments per job: customId, name, data,
// opts, timestamp, delay, priority, lifo ("1"/""), deduplication id ("" for
// none), deduplication ttl ms, parent job key ("" for none), parent JSON,
// waitChildren ("1": a flow parent, to waiting-children), deduplication
// modes (letters: "e" extend, "r" replace, "k" keepLastIfActive). Returns
// {2} when the jobs do not fit under maxDepth (nothing written), {5} when
// a parent is missing (nothing written), else {code, id, ...} per job:
// code 0 added, 1 duplicate custom id or deduplicated (nothing written but
// the deduplication bookkeeping; id is the existing job's).
var addScript = redis.NewScript(luaPrelude + dedupLua + `
local maxDepth, count = tonumber(ARGV[2]), tonumber(ARGV[3])
local N = 14
if maxDepth > 0 then
  local depth = rcall("LLEN", K.wait) + rcall("ZCARD", K.prioritized) + rcall("ZCARD", K.delayed)
  if depth + count > maxDepth then return {2} end
end
for j = 0, count - 1 do
  local pk = ARGV[4 + j * N + 10]
  if pk ~= "" and rcall("EXISTS", pk) == 0 then return {5} end
end
local maxEv = maxEvents()
local out = {}
for j = 0, count - 1 do
  local a = 4 + j * N
  local parentKey, parentData, waitChildren = ARGV[a + 10], ARGV[a + 11], ARGV[a + 12] == "1"
  local customId, name, data, opts = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local ts, delay, priority = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  local lifo = ARGV[a + 7] == "1"
  local n = rcall("INCR", K.id)
  local id = customId
  if id == "" then id = num(n) end
  local jk = P .. id
  local deid = ARGV[a + 8]
  local holder
  if customId ~= "" and rcall("EXISTS", jk) == 1 then
    rcall("XADD", K.events, "MAXLEN", "~", maxEv, "*", "event", "duplicated", "jobId", id)
    holder = id
  elseif deid ~= "" then
    local modes = ARGV[a + 13]
    local de = {id = deid, ttl = tonumber(ARGV[a + 9]), extend = string.find(modes, "e", 1, true) ~= nil,
      replace = string.find(modes, "r", 1, true) ~= nil, keepLast = string.find(modes, "k", 1, true) ~= nil}
    local nextJob = {name = name, data = data, opts = opts, pk = parentKey, pd = parentData}
    holder = deduplicate(de, id, nextJob, maxEv)
  end
  if holder then
    out[#out + 1] = 1
    out[#out + 1] = holder
  else
    rcall("HMSET", jk, "name", name, "data", data, "opts", opts, "timestamp", ARGV[a + 4],
      "delay", ARGV[a + 5], "priority", ARGV[a + 6])
    if deid ~= "" then rcall("HSET", jk, "deid", deid) end
    if parentKey ~= "" then rcall("HSET", jk, "parentKey", parentKey, "parent", parentData) end
    rcall("XADD", K.events, "*", "event", "added", "jobId", id, "name", name)
    if waitChildren then
      rcall("ZADD", K.waitingChildren, ARGV[a + 4], id)
      rcall("XADD", K.events, "MAXLEN", "~", maxEv, "*", "event", "waiting-children", "jobId", id)
    else
      placeNewJob(id, ts, delay, priority, lifo, maxEv)
    end
    if parentKey ~= "" then rcall("SADD", parentKey .. ":dependencies", jk) end
    out[#out + 1] = 0
    out[#out + 1] = id
  end
end
return out
`)

// dedupLua holds the deduplication steps of an add (Node 6.7's modes:
// simple, ttl, extend, replace, keepLastIfActive) and the requeue of the
// job kept for later by keepLastIfActive, done when the active job
// finishes.
const dedupLua = `
-- placeNewJob puts a freshly stored job where its delay and priority say.
local function placeNewJob(id, ts, delay, priority, lifo, maxEv)
  if delay > 0 then
    local due = ts + delay
    rcall("ZADD", K.delayed, num(delayedScore(due)), id)
    rcall("XADD", K.events, "MAXLEN", "~", maxEv, "*", "event", "delayed", "jobId", id, "delay", num(due))
    markDelayed()
  else
    enqueue(id, priority, lifo)
    markReady()
    rcall("XADD", K.events, "MAXLEN", "~", maxEv, "*", "event", "waiting", "jobId", id)
  end
end

local function setDedupKey(dk, id, de)
  if de.ttl and de.ttl > 0 then rcall("SET", dk, id, "PX", num(de.ttl)) else rcall("SET", dk, id) end
end

-- takeDedupKey gives the deduplication id to id: without expiry in
-- keepLastIfActive mode (the key then lives until the job finishes).
local function takeDedupKey(dk, id, de)
  if de.keepLast then rcall("SET", dk, id) else setDedupKey(dk, id, de) end
end

local function dedupEvent(holder, deid, discarded, maxEv)
  rcall("XADD", K.events, "MAXLEN", "~", maxEv, "*", "event", "deduplicated", "jobId", holder,
    "deduplicationId", deid, "deduplicatedJobId", discarded)
end

-- recoverStale: a key without expiry whose job is gone (it should have
-- been deleted when that job finished) is taken over by id.
local function recoverStale(dk, cur, id, de)
  if cur and rcall("PTTL", dk) == -1 and rcall("EXISTS", P .. cur) == 0 then
    rcall("DEL", dk, P .. "dn:" .. de.id)
    takeDedupKey(dk, id, de)
    return true
  end
  return false
end

-- keepForLater: in keepLastIfActive mode, while the holder is active, the
-- new job is kept (replacing any kept before) and added when the holder
-- finishes.
local function keepForLater(de, cur, id, nj, maxEv)
  if not de.keepLast or not cur then return false end
  local active = rcall("LRANGE", K.active, 0, -1)
  local found = false
  for _, x in ipairs(active) do
    if x == cur then found = true break end
  end
  if not found then return false end
  local nk = P .. "dn:" .. de.id
  rcall("DEL", nk)
  rcall("HSET", nk, "name", nj.name, "data", nj.data, "opts", nj.opts, "jid", id)
  if nj.pk ~= "" then rcall("HSET", nk, "pk", nj.pk, "pd", nj.pd, "pdk", nj.pk .. ":dependencies") end
  rcall("PERSIST", P .. "de:" .. de.id)
  dedupEvent(cur, de.id, id, maxEv)
  return true
end

-- deduplicate returns the id of the job that keeps the deduplication id
-- (nothing is added), or nil when id may be added (it then holds it).
local function deduplicate(de, id, nj, maxEv)
  local dk = P .. "de:" .. de.id
  if de.replace then
    local cur = rcall("GET", dk)
    if not cur then
      takeDedupKey(dk, id, de)
      return nil
    end
    if rcall("ZREM", K.delayed, cur) > 0 then
      -- the holder has not run yet: the new job replaces it
      removeJobKeys(P .. cur)
      rcall("XADD", K.events, "*", "event", "removed", "jobId", cur, "prev", "delayed")
      dedupEvent(id, de.id, cur, maxEv)
      rcall("DEL", P .. "dn:" .. de.id)
      if de.keepLast then
        rcall("SET", dk, id)
      elseif not de.extend and de.ttl and de.ttl > 0 then
        rcall("SET", dk, id, "KEEPTTL")
      else
        setDedupKey(dk, id, de)
      end
      return nil
    end
    if recoverStale(dk, cur, id, de) then return nil end
    keepForLater(de, cur, id, nj, maxEv)
    return cur
  end
  local taken
  if de.ttl and de.ttl > 0 then
    if de.extend then
      local cur = rcall("GET", dk)
      if not cur then
        takeDedupKey(dk, id, de)
        return nil
      end
      if recoverStale(dk, cur, id, de) then return nil end
      if keepForLater(de, cur, id, nj, maxEv) then return cur end
      takeDedupKey(dk, cur, de) -- the holder keeps it, for a new ttl
      dedupEvent(cur, de.id, id, maxEv)
      return cur
    end
    if de.keepLast then
      taken = rcall("SET", dk, id, "NX")
    else
      taken = rcall("SET", dk, id, "PX", num(de.ttl), "NX")
    end
  else
    taken = rcall("SET", dk, id, "NX")
  end
  if taken then return nil end
  local cur = rcall("GET", dk)
  if recoverStale(dk, cur, id, de) then return nil end
  if keepForLater(de, cur, id, nj, maxEv) then return cur end
  dedupEvent(cur, de.id, id, maxEv)
  return cur
end

-- releaseDedup frees the deduplication id of a finishing job (a key
-- without expiry it holds; a key with a ttl lives on) and adds the job
-- keepLastIfActive kept for later, if any.
local function releaseDedup(deid, id, now)
  local dk = P .. "de:" .. deid
  local ttl = rcall("PTTL", dk)
  if ttl == 0 or (ttl == -1 and rcall("GET", dk) == id) then rcall("DEL", dk) end
  local nk = P .. "dn:" .. deid
  if rcall("EXISTS", nk) == 0 then return end
  local f = rcall("HMGET", nk, "name", "data", "opts", "pk", "pd", "pdk", "rjk", "jid")
  local nid = rcall("INCR", K.id) .. ""
  if f[8] then nid = f[8] end
  local opts = decodeOpts(f[3])
  local de = opts["de"] or {}
  if de["keepLastIfActive"] then
    rcall("SET", dk, nid)
  else
    setDedupKey(dk, nid, {ttl = tonumber(de["ttl"])})
  end
  local jk = P .. nid
  local delay, priority = tonumber(opts["delay"]) or 0, tonumber(opts["priority"]) or 0
  rcall("HMSET", jk, "name", f[1] or "", "data", f[2] or "{}", "opts", f[3] or "{}", "timestamp", num(now),
    "delay", num(delay), "priority", num(priority), "deid", deid)
  if f[4] then rcall("HSET", jk, "parentKey", f[4], "parent", f[5] or "") end
  if f[7] then rcall("HSET", jk, "rjk", f[7]) end
  local maxEv = maxEvents()
  rcall("XADD", K.events, "*", "event", "added", "jobId", nid, "name", f[1] or "")
  placeNewJob(nid, now, delay, priority, opts["lifo"] == true, maxEv)
  if f[6] then rcall("SADD", f[6], jk) end
  rcall("DEL", nk)
end
`

// fetchScript: ARGV[2..] = now, token, lockMs, limiterMax, limiterDurationMs, workerName.
var fetchScript = redis.NewScript(luaPrelude + `
return fetch(tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])
`)

// finishScript: ARGV[2..] = id, token, now, target ("completed"/"failed"),
// value (returnvalue JSON or failedReason), stacktrace JSON ("" to leave),
// worker keep policy JSON ("" for none), fetchNext ("1"/""), then the fetch
// arguments: nextToken, lockMs, limiterMax, limiterDurationMs, workerName,
// then the metrics' max data points (0: no metrics).
// Returns a negative code, 0, or the fetch result.
var finishScript = redis.NewScript(luaPrelude + dedupLua + `
-- recordMetrics counts a finished job in the hash mk (count, prevTS,
-- prevCount) and, once per minute boundary crossed since prevTS, pushes
-- the jobs finished in that minute (then 0 for each further empty minute)
-- to the head of mk:data, keeping maxPoints entries: the layout Node's
-- Queue.getMetrics reads.
local function recordMetrics(mk, maxPoints, now)
  local before = rcall("HINCRBY", mk, "count", 1) - 1
  local prevTS = rcall("HGET", mk, "prevTS")
  if not prevTS then
    rcall("HSET", mk, "prevTS", num(now), "prevCount", 0)
    return
  end
  local minutes = math.min(math.floor(now / 60000) - math.floor(tonumber(prevTS) / 60000), maxPoints)
  if minutes <= 0 then return end
  local dk = mk .. ":data"
  rcall("LPUSH", dk, before - tonumber(rcall("HGET", mk, "prevCount") or 0))
  for _ = 2, minutes do rcall("LPUSH", dk, 0) end
  rcall("LTRIM", dk, 0, maxPoints - 1)
  rcall("HSET", mk, "prevCount", before, "prevTS", num(now))
end

local id, token, now, target, value, st, keepDefault = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local jk = P .. id
if rcall("EXISTS", jk) == 0 then return -1 end
local failed = target == "failed"
if not failed then
  if rcall("SCARD", jk .. ":dependencies") ~= 0 then return -4 end
  if rcall("ZCARD", jk .. ":unsuccessful") ~= 0 then return -9 end
end
local rc = releaseLock(jk, id, token)
if rc ~= 0 then return rc end
if failed then
  if st ~= "" then
    rcall("HSET", jk, "failedReason", value, "stacktrace", st)
  else
    rcall("HSET", jk, "failedReason", value)
  end
end
if rcall("LREM", K.active, -1, id) == 0 then return -3 end
local maxEv = maxEvents()
rcall("XTRIM", K.events, "MAXLEN", "~", maxEv)
local f = rcall("HMGET", jk, "deid", "parentKey", "parent", "opts")
if f[1] then releaseDedup(f[1], id, tonumber(now)) end
childFinished(jk, {f[2], f[3]}, failed, value, tonumber(now))
local atm = rcall("HINCRBY", jk, "atm", 1)
local opts = decodeOpts(f[4])
local keep
if failed then keep = opts["removeOnFail"] else keep = opts["removeOnComplete"] end
if keep == nil and keepDefault ~= "" then keep = cjson.decode(keepDefault) end
local set = K.completed
if failed then set = K.failed end

local function removeIds(ids)
  for _, rid in ipairs(ids) do removeJobKeys(P .. rid) end
end
local removeNow = keep == true or (type(keep) == "number" and keep <= 0) or
  (type(keep) == "table" and keep["count"] == 0)
if removeNow then
  removeJobKeys(jk)
else
  rcall("ZADD", set, now, id)
  if failed then
    rcall("HSET", jk, "failedReason", value, "finishedOn", now)
    rcall("HDEL", jk, "defa")
  else
    rcall("HSET", jk, "returnvalue", value, "finishedOn", now)
  end
  local count, age, limit
  if type(keep) == "number" then count = keep end
  if type(keep) == "table" then
    count = tonumber(keep["count"])
    age = tonumber(keep["age"])
    limit = tonumber(keep["limit"])
  end
  if age and age > 0 then
    local ids = rcall("ZRANGEBYSCORE", set, "-inf", num(tonumber(now) - age * 1000), "LIMIT", 0, limit or 1000)
    if #ids > 0 then
      removeIds(ids)
      rcall("ZREM", set, unpack(ids))
    end
  end
  if count and count > 0 then
    local ids = rcall("ZREVRANGE", set, count, -1)
    if #ids > 0 then
      removeIds(ids)
      rcall("ZREMRANGEBYRANK", set, 0, -(count + 1))
    end
  end
end
if failed then
  rcall("XADD", K.events, "*", "event", "failed", "jobId", id, "failedReason", value, "prev", "active")
  if atm >= (tonumber(opts["attempts"]) or 0) then
    rcall("XADD", K.events, "*", "event", "retries-exhausted", "jobId", id, "attemptsMade", atm)
  end
else
  rcall("XADD", K.events, "*", "event", "completed", "jobId", id, "returnvalue", value, "prev", "active")
end
local maxPoints = tonumber(ARGV[15])
if maxPoints and maxPoints > 0 then recordMetrics(P .. "metrics:" .. target, maxPoints, tonumber(now)) end
if ARGV[9] == "1" then
  local r = fetch(tonumber(now), ARGV[10], ARGV[11], tonumber(ARGV[12]), tonumber(ARGV[13]), ARGV[14])
  if r[2] ~= 0 or r[3] ~= 0 or r[4] ~= 0 then return r end
end
if rcall("LLEN", K.wait) == 0 and rcall("LLEN", K.active) == 0 and rcall("ZCARD", K.prioritized) == 0 then
  rcall("XADD", K.events, "*", "event", "drained")
end
return 0
`)

// retryScript: ARGV[2..] = id, token, now, backoffMs, failedReason, stacktrace JSON.
var retryScript = redis.NewScript(luaPrelude + `
local id, token, now, backoff = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local jk = P .. id
if rcall("EXISTS", jk) == 0 then return -1 end
local rc = releaseLock(jk, id, token)
if rc ~= 0 then return rc end
rcall("HSET", jk, "failedReason", ARGV[6], "stacktrace", ARGV[7])
if rcall("LREM", K.active, -1, id) == 0 then return -3 end
rcall("HINCRBY", jk, "atm", 1)
local maxEv = maxEvents()
if backoff > 0 then
  local due = now + backoff
  rcall("HSET", jk, "delay", ARGV[5])
  rcall("ZADD", K.delayed, num(delayedScore(due)), id)
  rcall("XADD", K.events, "MAXLEN", "~", maxEv, "*", "event", "delayed", "jobId", id, "delay", num(due))
  markDelayed()
else
  promoteDelayed(now)
  local pr = tonumber(rcall("HGET", jk, "priority")) or 0
  local opts = jobOpts(jk)
  if pr == 0 and opts["lifo"] == true then
    rcall("RPUSH", K.wait, id)
  else
    enqueue(id, pr, false)
  end
  markReady()
  rcall("XADD", K.events, "MAXLEN", "~", maxEv, "*", "event", "waiting", "jobId", id, "prev", "active")
end
return 0
`)

// requeueScript gives an unfinished job back (a worker shutting down):
// ARGV[2..] = id, token. The job goes to the processing end of wait.
var requeueScript = redis.NewScript(luaPrelude + `
local id, token = ARGV[2], ARGV[3]
local jk = P .. id
if rcall("EXISTS", jk) == 0 then return -1 end
local rc = releaseLock(jk, id, token)
if rc ~= 0 then return rc end
if rcall("LREM", K.active, -1, id) == 0 then return -3 end
local pr = tonumber(rcall("HGET", jk, "priority")) or 0
enqueue(id, pr, true)
markReady()
rcall("XADD", K.events, "MAXLEN", "~", maxEvents(), "*", "event", "waiting", "jobId", id, "prev", "active")
return 0
`)

// extendLocksScript: ARGV[2] = lockMs, then id, token pairs. Returns the
// ids whose lock was not ours any more.
var extendLocksScript = redis.NewScript(luaPrelude + `
local failed = {}
for i = 3, #ARGV, 2 do
  local id, tok = ARGV[i], ARGV[i + 1]
  local lk = P .. id .. ":lock"
  if rcall("GET", lk) == tok then
    rcall("SET", lk, tok, "PX", ARGV[2])
    rcall("SREM", K.stalled, id)
  else
    failed[#failed + 1] = id
  end
end
return failed
`)

// stalledScript: ARGV[2..] = maxStalledCount, now, stalledIntervalMs.
// Returns {wait, id...}: the ms until the next check may run (the
// stalled-check key's PTTL when another check ran within the interval,
// else the interval) and the ids moved back to wait.
var stalledScript = redis.NewScript(luaPrelude + `
local maxStalled, now, interval = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local ttl = rcall("PTTL", K.stalledCheck)
if ttl >= 0 then return {ttl} end
rcall("SET", K.stalledCheck, now, "PX", interval)
rcall("XTRIM", K.events, "MAXLEN", "~", maxEvents())
local out = {tonumber(interval)}
local ids = rcall("SMEMBERS", K.stalled)
if #ids > 0 then
  rcall("DEL", K.stalled)
  for _, id in ipairs(ids) do
    local jk = P .. id
    if rcall("EXISTS", jk .. ":lock") == 0 and rcall("LREM", K.active, 1, id) > 0 then
      if rcall("EXISTS", jk) == 1 then
        local stc = rcall("HINCRBY", jk, "stc", 1)
        if stc > maxStalled then
          local rjk = rcall("HGET", jk, "rjk")
          local scheduled = rjk and (rcall("EXISTS", P .. "repeat:" .. rjk) == 1 or rcall("ZSCORE", K.rep, rjk))
          if not scheduled then
            rcall("HSET", jk, "defa", "job stalled more than allowable limit")
          end
        end
        rcall("RPUSH", K.wait, id)
        markReady()
        rcall("XADD", K.events, "*", "event", "waiting", "jobId", id, "prev", "active")
        rcall("XADD", K.events, "*", "event", "stalled", "jobId", id)
        out[#out + 1] = id
      end
    end
  end
end
local active = rcall("LRANGE", K.active, 0, -1)
for i = 1, #active, 1000 do
  rcall("SADD", K.stalled, unpack(active, i, math.min(i + 999, #active)))
end
return out
`)

// pauseScript: ARGV[2] = "pause" or "resume".
var pauseScript = redis.NewScript(luaPrelude + `
if ARGV[2] == "pause" then
  rcall("HSET", K.meta, "paused", 1)
  rcall("DEL", K.marker)
  rcall("XADD", K.events, "MAXLEN", "~", maxEvents(), "*", "event", "paused")
  return 0
end
rcall("HDEL", K.meta, "paused")
while true do
  local id = rcall("LPOP", K.paused)
  if not id then break end
  rcall("RPUSH", K.wait, id)
end
if rcall("LLEN", K.wait) + rcall("ZCARD", K.prioritized) > 0 then
  rcall("ZADD", K.marker, 0, "0")
else
  markDelayed()
end
rcall("XADD", K.events, "MAXLEN", "~", maxEvents(), "*", "event", "resumed")
return 0
`)

// progressScript: ARGV[2..] = id, progress JSON.
var progressScript = redis.NewScript(luaPrelude + `
local jk = P .. ARGV[2]
if rcall("EXISTS", jk) == 0 then return -1 end
rcall("HSET", jk, "progress", ARGV[3])
rcall("XADD", K.events, "MAXLEN", "~", maxEvents(), "*", "event", "progress", "jobId", ARGV[2], "data", ARGV[3])
return 0
`)

// logScript: ARGV[2..] = id, line. Appends to the job's :logs list, keeping
// the last opts.kl (keepLogs) lines. Returns the number of lines, or -1.
var logScript = redis.NewScript(luaPrelude + `
local jk = P .. ARGV[2]
if rcall("EXISTS", jk) == 0 then return -1 end
local n = rcall("RPUSH", jk .. ":logs", ARGV[3])
local kl = tonumber(jobOpts(jk)["kl"])
if kl and kl > 0 then
  rcall("LTRIM", jk .. ":logs", -kl, -1)
  return math.min(kl, n)
end
return n
`)

// countsScript returns {wait, prioritized, delayed, active, completed, failed, paused(0/1)}.
var countsScript = redis.NewScript(luaPrelude + `
local paused = 0
if rcall("HEXISTS", K.meta, "paused") == 1 then paused = 1 end
return {rcall("LLEN", K.wait) + rcall("LLEN", K.paused), rcall("ZCARD", K.prioritized), rcall("ZCARD", K.delayed),
  rcall("LLEN", K.active), rcall("ZCARD", K.completed), rcall("ZCARD", K.failed), paused}
`)
