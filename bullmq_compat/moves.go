package bullmq

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sentinel errors a Handler returns after moving its job out of active
// itself (Node's DelayedError, WaitingChildrenError and RateLimitError
// pattern). The worker then neither completes nor fails the job and
// counts no attempt.
var (
	// ErrDelayed: the handler moved its job to delayed with
	// Job.MoveToDelayed.
	ErrDelayed = errors.New("bullmq: job moved to delayed")
	// ErrWaitingChildren: the handler moved its job to waiting-children
	// with Job.MoveToWaitingChildren (which returned true).
	ErrWaitingChildren = errors.New("bullmq: job moved to waiting-children")
	// ErrRateLimited: the handler rate-limited the queue with
	// Worker.RateLimit; the worker puts the job back in wait and fetches
	// nothing until the limit expires.
	ErrRateLimited = errors.New("bullmq: rate limit exceeded")
)

// movedErr reports whether err is one of the sentinels above.
func movedErr(err error) bool {
	return errors.Is(err, ErrDelayed) || errors.Is(err, ErrWaitingChildren) || errors.Is(err, ErrRateLimited)
}

// delayScript moves an active job to delayed without counting an attempt
// (Node's Job.moveToDelayed): ARGV[2..] = id, token, now, delayMs.
var delayScript = redis.NewScript(luaPrelude + `
local id, token, now, delay = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local jk = P .. id
if rcall("EXISTS", jk) == 0 then return -1 end
local rc = releaseLock(jk, id, token)
if rc ~= 0 then return rc end
if rcall("LREM", K.active, -1, id) == 0 then return -3 end
local due = now + delay
rcall("HSET", jk, "delay", delay)
rcall("ZADD", K.delayed, num(delayedScore(due)), id)
rcall("XADD", K.events, "MAXLEN", "~", maxEvents(), "*", "event", "delayed", "jobId", id, "delay", num(due))
markDelayed()
return 0
`)

// waitChildrenScript moves an active job with pending children to
// waiting-children (Node's Job.moveToWaitingChildren): ARGV[2..] = id,
// token, now. Returns 0 when moved, 1 when no child is pending, or a
// negative code (-9: a child failed with failParentOnFailure).
var waitChildrenScript = redis.NewScript(luaPrelude + `
local id, token, now = ARGV[2], ARGV[3], ARGV[4]
local jk = P .. id
if rcall("EXISTS", jk) == 0 then return -1 end
if rcall("ZCARD", jk .. ":unsuccessful") ~= 0 then return -9 end
if rcall("SCARD", jk .. ":dependencies") == 0 then return 1 end
local rc = releaseLock(jk, id, token)
if rc ~= 0 then return rc end
if rcall("LREM", K.active, -1, id) == 0 then return -3 end
rcall("ZADD", K.waitingChildren, now, id)
rcall("XADD", K.events, "*", "event", "waiting-children", "jobId", id, "prev", "active")
return 0
`)

// activeJob checks that j is a job its worker holds.
func (j *Job) activeJob(op string) error {
	if j.w == nil || j.token == "" {
		return fmt.Errorf("bullmq: %s: job %s is not held by a worker", op, j.ID)
	}
	return nil
}

// MoveToDelayed moves the job, from inside its handler, to the delayed
// set until until (now if until is past), without counting an attempt, as
// Node's job.moveToDelayed does; the handler then returns ErrDelayed. The
// job runs again when due, on any worker, Go or Node.
func (j *Job) MoveToDelayed(ctx context.Context, until time.Time) error {
	if err := j.activeJob("move to delayed"); err != nil {
		return err
	}
	now := time.Now()
	delay := max(until.Sub(now).Milliseconds(), 0)
	j.w.untrack(j)
	code, err := delayScript.Run(ownerCtx(ctx, j.owner), j.rdb, j.q.all, j.q.base, j.ID, j.token,
		now.UnixMilli(), delay).Int64()
	if err == nil && code < 0 {
		err = scriptError(code, j.ID, "move to delayed")
	}
	if err != nil {
		j.w.track(j)
		return fmt.Errorf("bullmq: %w", err)
	}
	j.Delay = time.Duration(delay) * time.Millisecond
	j.moved = true
	return nil
}

// MoveToWaitingChildren moves the job, from inside its handler, to
// waiting-children if it has children that have not finished (Node's
// job.moveToWaitingChildren): it returns true, and the handler then
// returns ErrWaitingChildren; the job runs again once its children
// completed. It returns false, leaving the job active, when no child is
// pending, and an error when a child failed with FailParentOnFailure.
func (j *Job) MoveToWaitingChildren(ctx context.Context) (bool, error) {
	if err := j.activeJob("move to waiting-children"); err != nil {
		return false, err
	}
	j.w.untrack(j)
	code, err := waitChildrenScript.Run(ownerCtx(ctx, j.owner), j.rdb, j.q.all, j.q.base, j.ID, j.token,
		time.Now().UnixMilli()).Int64()
	if err == nil && code < 0 {
		err = scriptError(code, j.ID, "move to waiting-children")
	}
	if err != nil || code != 0 {
		j.w.track(j)
		if err != nil {
			return false, fmt.Errorf("bullmq: %w", err)
		}
		return false, nil
	}
	j.moved = true
	return true, nil
}

// maxSafeInteger is what Node's worker.rateLimit stores in the limiter key.
const maxSafeInteger = 1<<53 - 1

// RateLimit rate-limits the whole queue for d (Node's worker.rateLimit):
// workers with a limiter, Go or Node, fetch nothing until it expires. A
// handler that calls it returns ErrRateLimited; the worker then puts that
// job back in wait and fetches nothing itself until the limit expires.
func (w *Worker) RateLimit(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return invalidf("RateLimit duration %v", d)
	}
	if err := w.rdb.Set(ownerCtx(ctx, w.owner), w.k.key(kLimiter), maxSafeInteger, d).Err(); err != nil {
		return fmt.Errorf("bullmq: rate limit %s: %w", w.k.name, err)
	}
	return nil
}

// rateLimited puts j back in wait after its handler returned
// ErrRateLimited, and keeps the worker from fetching until the limiter
// key expires.
func (w *Worker) rateLimited(j *Job) {
	ctx := w.cmdCtx()
	code, err := requeueScript.Run(ctx, w.rdb, w.k.all, w.k.base, j.ID, j.token).Int64()
	if err == nil && code < 0 {
		err = scriptError(code, j.ID, "move back to wait")
	}
	w.report(err)
	if ttl, err := w.rdb.PTTL(ctx, w.k.key(kLimiter)).Result(); err == nil && ttl > 0 {
		w.limitUntil.Store(time.Now().Add(ttl).UnixMilli())
	}
}

// waitLimit sleeps until a rate limit set through ErrRateLimited expires.
func (w *Worker) waitLimit(ctx context.Context) {
	if d := time.Until(time.UnixMilli(w.limitUntil.Load())); d > 0 {
		sleepCtx(ctx, d)
	}
}
