package bullmq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
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
		// Node tells a legacy key from a scheduler id of the same shape
		// by the scheduler hash's iteration count, which legacy entries
		// lack.
		ic, err := w.rdb.HExists(w.cmdCtx(), w.k.key(kRepeat)+":"+j.RepeatJobKey, "ic").Result()
		if err != nil {
			w.report(fmt.Errorf("bullmq: job scheduler %s: %w", j.RepeatJobKey, err))
			return
		}
		if !ic {
			w.report(&LegacyRepeatableError{Key: j.RepeatJobKey})
			return
		}
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

// LegacyRepeatableError is reported to WorkerOptions.OnError when a worker
// runs a job of a BullMQ 5 repeatable job: like Node 6.7's worker, it runs
// the job but adds no next iteration. Its message is Node's.
type LegacyRepeatableError struct {
	Key string // the legacy repeat key, name:id:endDate:tz:pattern-or-every
}

// Error returns Node 6.7's message for the key.
func (e *LegacyRepeatableError) Error() string {
	return "Failed to add repeatable job for next iteration: Legacy repeatable job metadata is not supported in BullMQ v6 " +
		`(key: "` + e.Key + `"). Migrate legacy repeatable jobs to Job Schedulers before upgrading. ` +
		"See https://docs.bullmq.io/guide/migrations/migrate-from-v5-to-v6"
}

// LegacyRepeatable is a BullMQ 5 repeatable job found in a queue's repeat
// set, parsed from its key (name:id:endDate:tz:pattern-or-every).
type LegacyRepeatable struct {
	Key     string
	Name    string
	ID      string        // the repeat's jobId option ("" if none)
	EndDate int64         // ms, 0 if none
	TZ      string        // "" if none
	Pattern string        // cron pattern, or "" for an every repeat
	Every   time.Duration // every interval, or 0 for a pattern
	Next    time.Time     // the next run it was scheduled for
}

// LegacyRepeatables lists the BullMQ 5 repeatable jobs left in the queue,
// which neither Node 6.7 nor this package schedules any more (their
// pending jobs still run): what a migration to job schedulers needs to
// recreate. Job schedulers whose ids look like legacy keys are not listed.
func (q *Queue) LegacyRepeatables(ctx context.Context) ([]LegacyRepeatable, error) {
	if q.closed.Load() {
		return nil, ErrClosed
	}
	ctx = ownerCtx(ctx, q.owner)
	zs, err := q.rdb.ZRangeWithScores(ctx, q.k.key(kRepeat), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("bullmq: legacy repeatables of %s: %w", q.k.name, err)
	}
	var out []LegacyRepeatable
	for _, z := range zs {
		key, _ := z.Member.(string)
		if !hasLegacyRepeatKeyShape(key) {
			continue
		}
		ic, err := q.rdb.HExists(ctx, q.k.key(kRepeat)+":"+key, "ic").Result()
		if err != nil {
			return nil, fmt.Errorf("bullmq: legacy repeatables of %s: %w", q.k.name, err)
		}
		if ic {
			continue // a job scheduler
		}
		p := strings.SplitN(key, ":", 5)
		l := LegacyRepeatable{Key: key, Name: p[0], ID: p[1], TZ: p[3], Next: time.UnixMilli(int64(z.Score))}
		l.EndDate, _ = strconv.ParseInt(p[2], 10, 64)
		if isDigits(p[4]) {
			ms, _ := strconv.ParseInt(p[4], 10, 64)
			l.Every = time.Duration(ms) * time.Millisecond
		} else {
			l.Pattern = p[4]
		}
		out = append(out, l)
	}
	return out, nil
}
