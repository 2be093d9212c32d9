package bullmq

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Jobs produced by Node job schedulers (Queue.upsertJobScheduler) carry the
// scheduler id in their `rjk` field. Like Node's worker, a Go worker that
// fetches such a job adds the scheduler's next iteration (a delayed job with
// id repeat:<schedulerId>:<ms>) before it runs the handler, so the schedule
// goes on whichever worker takes the jobs. Both `every` and cron `pattern`
// schedulers are handled; the pattern's next time is computed in Go (see
// cron.go).

// schedulerScript adds the next iteration of a job scheduler.
// ARGV[2..] = schedulerId, producer job id, now, next ms for a pattern
// scheduler ("" for an every scheduler). Returns the new job id, or "".
var schedulerScript = redis.NewScript(luaPrelude + `
local sid, producer, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
local prev = rcall("ZSCORE", K.rep, sid)
if not prev then return "" end
prev = tonumber(prev)
if producer ~= "repeat:" .. sid .. ":" .. num(prev) then return "" end
local sk = K.rep .. ":" .. sid
local a = rcall("HMGET", sk, "name", "data", "every", "offset")
local opts = jobOpts(P .. producer)
if type(opts["repeat"]) ~= "table" then opts["repeat"] = {} end
local rep = opts["repeat"]
local count = (tonumber(rep["count"]) or 0) + 1
if rep["limit"] and count > tonumber(rep["limit"]) then return "" end
if rep["endDate"] and now > tonumber(rep["endDate"]) then return "" end
local every = tonumber(a[3]) or tonumber(rep["every"])
local nextMs
if every then
  local offset = tonumber(a[4]) or tonumber(rep["offset"]) or 0
  nextMs = prev + every
  if nextMs < now then
    local aligned = math.floor(now / every) * every + offset
    if aligned <= now then nextMs = aligned + every else nextMs = aligned end
  end
  nextMs = math.floor(nextMs)
else
  nextMs = tonumber(ARGV[5])
  if not nextMs then return "" end
  opts["prevMillis"] = nextMs
end
local id = "repeat:" .. sid .. ":" .. num(nextMs)
local jk = P .. id
local maxEv = maxEvents()
if rcall("EXISTS", jk) == 1 then
  rcall("XADD", K.events, "MAXLEN", "~", maxEv, "*", "event", "duplicated", "jobId", id)
  return ""
end
rcall("ZADD", K.rep, num(nextMs), sid)
rcall("HINCRBY", sk, "ic", 1)
rcall("INCR", K.id)
local delay = nextMs - now
if delay < 0 then delay = 0 end
rep["count"] = count
opts["delay"] = delay
opts["jobId"] = id
opts["timestamp"] = now
opts["repeatJobKey"] = sid
local priority = tonumber(opts["priority"]) or 0
rcall("HMSET", jk, "name", a[1] or "", "data", a[2] or "{}", "opts", cjson.encode(opts),
  "timestamp", num(now), "delay", num(delay), "priority", priority, "rjk", sid)
rcall("XADD", K.events, "*", "event", "added", "jobId", id, "name", a[1] or "")
if delay > 0 then
  rcall("ZADD", K.delayed, num(delayedScore(now + delay)), id)
  rcall("XADD", K.events, "MAXLEN", "~", maxEv, "*", "event", "delayed", "jobId", id, "delay", num(now + delay))
  markDelayed()
else
  if priority == 0 and opts["lifo"] then
    rcall("RPUSH", K.wait, id)
  else
    enqueue(id, priority, false)
  end
  markReady()
  rcall("XADD", K.events, "MAXLEN", "~", maxEv, "*", "event", "waiting", "jobId", id)
end
return id
`)

// repeatOpts is the `repeat` object of a scheduler job's opts.
type repeatOpts struct {
	Pattern   string `json:"pattern"`
	Every     int64  `json:"every"`
	TZ        string `json:"tz"`
	StartDate int64  `json:"startDate"`
}

// scheduleNext adds the next iteration of the job scheduler that produced
// j. Failures are reported to OnError; the job itself still runs.
func (w *Worker) scheduleNext(j *Job) {
	if hasLegacyRepeatKeyShape(j.RepeatJobKey) {
		w.report(fmt.Errorf("bullmq: job %s comes from a legacy repeatable job (%s), which BullMQ 6 no longer schedules", j.ID, j.RepeatJobKey))
		return
	}
	now := time.Now()
	next := ""
	var r repeatOpts
	if len(j.opts.Repeat) > 0 {
		_ = json.Unmarshal(j.opts.Repeat, &r)
	}
	if r.Pattern != "" && r.Every == 0 {
		var prev int64
		var o struct {
			PrevMillis int64 `json:"prevMillis"`
		}
		_ = json.Unmarshal(j.Opts, &o)
		prev = o.PrevMillis
		from := now
		if prev > now.UnixMilli() {
			from = time.UnixMilli(prev)
		}
		if r.StartDate > 0 && time.UnixMilli(r.StartDate).After(from) {
			from = time.UnixMilli(r.StartDate)
		}
		t, err := nextCron(r.Pattern, r.TZ, from)
		if err != nil {
			w.report(fmt.Errorf("bullmq: job scheduler %s: %w", j.RepeatJobKey, err))
			return
		}
		if t.Before(now) {
			t = now
		}
		next = fmt.Sprint(t.UnixMilli())
	}
	_, err := schedulerScript.Run(w.cmdCtx(), w.rdb, w.k.all, w.k.base, j.RepeatJobKey, j.ID, now.UnixMilli(), next).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		w.report(fmt.Errorf("bullmq: job scheduler %s: next iteration: %w", j.RepeatJobKey, err))
	}
}

// hasLegacyRepeatKeyShape reports whether key looks like a BullMQ 5
// repeatable-job key, name:id:endDate:tz:<cron or every>.
func hasLegacyRepeatKeyShape(key string) bool {
	parts := strings.SplitN(key, ":", 5)
	if len(parts) < 5 {
		return false
	}
	if parts[2] != "" && !isDigits(parts[2]) {
		return false
	}
	suffix := parts[4]
	if suffix == "" {
		return false
	}
	return strings.Contains(suffix, " ") || isDigits(suffix)
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
