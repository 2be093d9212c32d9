package bullmq

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redisleak/redisleak"
)

// Handler processes one job. Its result is stored as the job's returnvalue
// (encoded with encoding/json; a json.RawMessage must be valid JSON); an
// error fails the attempt, and the job is retried while its Attempts allow
// (wrap the error with Unrecoverable to prevent that). A panic fails the
// attempt with the panic message and stack; the worker keeps running.
//
// ctx ends when the worker's Run context ends or when Close gives up
// waiting; ctx carries no long-lived mark, so connections the handler
// holds too long are still reported by an attached tracker.
type Handler func(ctx context.Context, job *Job) (any, error)

// Worker processes the jobs of one queue, like Node's BullMQ Worker, and
// interoperates with Node producers and workers on the same queue.
//
// It blocks on the queue's marker on a dedicated connection (acquired with
// redisleak.WithLongLived and the owner "bullmq:worker:<queue>"); all other
// commands go through the client's pool with that owner.
type Worker struct {
	rdb   redis.UniversalClient
	k     *keys
	h     Handler
	opts  WorkerOptions
	owner string
	id    string

	keepCompleted, keepFailed string // worker retention policies as JSON

	tokens     atomic.Uint64
	closing    atomic.Bool
	limitUntil atomic.Int64 // unix ms: no fetch before (ErrRateLimited)

	mu      sync.Mutex
	state   int // 0 new, 1 running, 2 closed
	stop    context.CancelFunc
	loopCtx context.Context
	jobsCtx context.Context
	cancelJ context.CancelFunc
	runDone chan struct{}
	running map[string]string // job id → token
	wg      sync.WaitGroup

	onFinish func() // test hook: after a job's finish script returned
}

// NewWorker returns a Worker for queue that runs h for each job once Run is
// called. It validates its arguments and does not touch Redis.
func NewWorker(rdb redis.UniversalClient, queue string, h Handler, opts WorkerOptions) (*Worker, error) {
	if rdb == nil {
		return nil, invalidf("nil Redis client")
	}
	if h == nil {
		return nil, invalidf("nil Handler")
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	k, err := newKeys(o.Prefix, queue)
	if err != nil {
		return nil, err
	}
	w := &Worker{
		rdb: rdb, k: k, h: h, opts: o, owner: "bullmq:worker:" + queue,
		id: newUUID(), running: map[string]string{}, runDone: make(chan struct{}),
	}
	if o.RemoveOnComplete != nil {
		b, _ := json.Marshal(o.RemoveOnComplete)
		w.keepCompleted = string(b)
	}
	if o.RemoveOnFail != nil {
		b, _ := json.Marshal(o.RemoveOnFail)
		w.keepFailed = string(b)
	}
	return w, nil
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// ClientName returns the client name of the worker's blocking connection,
// the one Node's Queue.getWorkers() lists.
func (w *Worker) ClientName() string { return w.k.clientName(w.opts.Name) }

func (w *Worker) report(err error) {
	if err != nil && w.opts.OnError != nil {
		w.opts.OnError(err)
	}
}

// cmdCtx is the context of the worker's pool commands: owner-marked and
// not cancelled, so a script that moves a job is never abandoned half-way.
func (w *Worker) cmdCtx() context.Context {
	return redisleak.WithOwner(context.Background(), w.owner)
}

func (w *Worker) newToken() string {
	return w.id + ":" + strconv.FormatUint(w.tokens.Add(1)-1, 10)
}

// Run fetches and processes jobs until ctx ends or Close is called. It
// returns nil after Close, ctx's error when ctx ended, or an error if the
// worker cannot start (ErrClosed after Close; an error on a second Run; the
// error of opening the blocking connection, after which the Worker can
// only be closed). When ctx ends, the handlers' contexts end too; jobs
// whose handler then fails are put back in wait, untouched, for another
// worker.
func (w *Worker) Run(ctx context.Context) error {
	w.mu.Lock()
	switch w.state {
	case 1:
		w.mu.Unlock()
		return errors.New("bullmq: Worker.Run called twice")
	case 2:
		w.mu.Unlock()
		return ErrClosed
	}
	w.state = 1
	loopCtx, stop := context.WithCancel(ctx)
	w.stop = stop
	w.loopCtx = loopCtx
	jobsCtx, cancelJ := context.WithCancel(ctx)
	w.jobsCtx = redisleak.WithoutLongLived(jobsCtx)
	w.cancelJ = cancelJ
	w.mu.Unlock()
	defer close(w.runDone)
	defer cancelJ()
	defer stop()

	bc, err := openBlockConn(ctx, w.rdb, w.k.key(kMarker), w.ClientName(), w.owner)
	if err != nil {
		return fmt.Errorf("bullmq: worker %s: blocking connection: %w", w.k.name, err)
	}
	defer bc.Close()

	renewCtx, stopRenew := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	bg.Add(1)
	go func() { defer bg.Done(); w.renewLocks(renewCtx) }()
	if !w.opts.SkipStalledCheck {
		bg.Add(1)
		go func() { defer bg.Done(); w.stalledLoop(loopCtx) }()
	}

	w.loop(loopCtx, bc)
	w.closing.Store(true)
	w.wg.Wait()
	stopRenew()
	bg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return nil
}

// reconnect reopens a blocking connection that a network error closed (a
// restarted or unreachable server): the new one is named and marked again.
// After a Redis error reply the connection is kept; the pause still applies.
func (w *Worker) reconnect(ctx context.Context, bc *blockConn) {
	for ctx.Err() == nil {
		sleepCtx(ctx, time.Second)
		err := bc.open(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		w.report(fmt.Errorf("bullmq: worker %s: reconnect blocking connection: %w", w.k.name, err))
	}
}

func (w *Worker) loop(ctx context.Context, bc *blockConn) {
	slots := make(chan struct{}, w.opts.Concurrency)
	var blockUntil int64
	for ctx.Err() == nil {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		if ctx.Err() != nil || w.closing.Load() { // select picks at random when both are ready
			<-slots
			return
		}
		w.waitLimit(ctx)
		job, limitDelay, delayUntil, err := w.fetch()
		if err != nil {
			<-slots
			w.report(fmt.Errorf("bullmq: worker %s: fetch: %w", w.k.name, err))
			sleepCtx(ctx, time.Second)
			continue
		}
		if job != nil {
			w.wg.Add(1)
			go w.processChain(job, slots)
			continue
		}
		<-slots
		if limitDelay > 0 {
			d := time.Duration(limitDelay) * time.Millisecond
			sleepCtx(ctx, min(d, w.opts.MaximumRateLimitDelay))
			continue
		}
		blockUntil = delayUntil
		if err := w.waitMarker(ctx, bc, blockUntil); err != nil {
			w.report(fmt.Errorf("bullmq: worker %s: wait on marker: %w", w.k.name, err))
			w.reconnect(ctx, bc)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// waitMarker blocks on the marker until jobs may be available: a "0"
// member, a due delayed job, or the timeout. An error means the blocking
// connection failed.
func (w *Worker) waitMarker(ctx context.Context, bc *blockConn, blockUntil int64) error {
	for ctx.Err() == nil {
		timeout := w.opts.DrainDelay
		if blockUntil > 0 {
			d := time.Duration(blockUntil-time.Now().UnixMilli()) * time.Millisecond
			if d <= 0 {
				return nil
			}
			timeout = max(min(d, 10*time.Second), time.Millisecond)
		}
		var res *redis.ZWithKey
		err := bc.do(ctx, func(c context.Context, r blockCmd) error {
			var err error
			res, err = bzpopmin(c, r, w.k.key(kMarker), r.maxBlock(timeout))
			return err
		})
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, redis.Nil):
			return nil // timeout: fetch anyway (promotes due delayed jobs)
		case err != nil:
			return err
		}
		t := int64(res.Score)
		if t == 0 || t-time.Now().UnixMilli() < 1 {
			return nil
		}
		if blockUntil == 0 || t < blockUntil {
			blockUntil = t
		}
	}
	return nil
}

// fetch moves the next job into active. With no job it returns the rate
// limit delay and the next delayed job's due time (ms), if any.
func (w *Worker) fetch() (job *Job, limitDelay, delayUntil int64, err error) {
	token := w.newToken()
	res, err := fetchScript.Run(w.cmdCtx(), w.rdb, w.k.all, w.k.base,
		time.Now().UnixMilli(), token, w.opts.LockDuration.Milliseconds(),
		w.opts.Limiter.Max, w.opts.Limiter.Duration.Milliseconds(), w.opts.Name).Slice()
	if err != nil {
		return nil, 0, 0, err
	}
	return w.parseFetch(res, token)
}

func (w *Worker) parseFetch(res []any, token string) (*Job, int64, int64, error) {
	if len(res) != 4 {
		return nil, 0, 0, fmt.Errorf("unexpected fetch reply %v", res)
	}
	limit, _ := res[2].(int64)
	until, _ := res[3].(int64)
	flat, ok := res[0].([]any)
	id, _ := res[1].(string)
	if !ok || id == "" {
		return nil, limit, until, nil
	}
	j := jobFromFlat(id, flat)
	j.token, j.q, j.rdb, j.owner, j.w = token, w.k, w.rdb, w.owner, w
	return j, limit, until, nil
}

// processChain runs job and the jobs fetched when each one finishes, then
// frees its slot.
func (w *Worker) processChain(job *Job, slots chan struct{}) {
	defer w.wg.Done()
	defer func() { <-slots }()
	for job != nil {
		s := w.process(job)
		job = s.next
		for limit := s.limit; job == nil && limit > 0 && !w.closing.Load(); {
			// Rate limited: wait here, keeping the slot, until the limiter
			// lets a job through (the main loop may be blocked on the
			// marker, which a rate-limited queue does not get).
			sleepCtx(w.loopCtx, min(time.Duration(limit)*time.Millisecond, w.opts.MaximumRateLimitDelay))
			if w.loopCtx.Err() != nil {
				return
			}
			next, l, _, err := w.fetch()
			if err != nil {
				w.report(fmt.Errorf("bullmq: worker %s: fetch: %w", w.k.name, err))
				return
			}
			job, limit = next, l
		}
	}
}

// step is what finishing a job leads to: the next job, or a rate limit
// delay (ms) before the next fetch.
type step struct {
	next  *Job
	limit int64
}

func (w *Worker) track(j *Job) {
	w.mu.Lock()
	w.running[j.ID] = j.token
	w.mu.Unlock()
}

// untrack stops the lock renewal of j. It is called before the script that
// finishes, retries or requeues j runs, so that a renewal racing with that
// script does not mistake the released lock for a lost one. A job id
// fetched again under another token is left alone.
func (w *Worker) untrack(j *Job) {
	w.mu.Lock()
	if w.running[j.ID] == j.token {
		delete(w.running, j.ID)
	}
	w.mu.Unlock()
}

// stillRunning reports whether j's id is still tracked under token.
func (w *Worker) stillRunning(id, token string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.running[id] == token
}

// process runs one job to its end in Redis and returns the next job, if
// finishing it fetched one.
func (w *Worker) process(j *Job) step {
	w.track(j)
	defer w.untrack(j)
	if j.RepeatJobKey != "" {
		w.scheduleNext(j)
	}
	if j.deferred != "" {
		w.untrack(j)
		err := Unrecoverable(errors.New(j.deferred))
		return w.fail(j, err, j.deferred, nodeTrace(err, j.deferred, callerFrames(0)))
	}
	jctx, cancel := context.WithCancel(w.jobsCtx)
	result, err, stack := w.call(jctx, j)
	cancel()
	w.untrack(j)
	if err != nil && movedErr(err) {
		switch {
		case errors.Is(err, ErrRateLimited):
			w.rateLimited(j)
			return step{}
		case j.moved:
			return step{} // the handler moved it (MoveToDelayed, MoveToWaitingChildren)
		}
		err = fmt.Errorf("%w, but the handler did not move job %s", err, j.ID)
	}
	if err != nil {
		if w.jobsCtx.Err() != nil {
			// Interrupted by shutdown: give the job back untouched.
			code, rerr := requeueScript.Run(w.cmdCtx(), w.rdb, w.k.all, w.k.base, j.ID, j.token).Int64()
			if rerr == nil && code < 0 {
				rerr = scriptError(code, j.ID, "requeue")
			}
			w.report(rerr)
			return step{}
		}
		return w.fail(j, err, err.Error(), stack)
	}
	rv, eerr := encodeJSON(result)
	if eerr != nil {
		err := Unrecoverable(fmt.Errorf("bullmq: cannot encode the return value of job %s: %w", j.ID, eerr))
		return w.fail(j, err, err.Error(), nodeTrace(err, err.Error(), callerFrames(0)))
	}
	return w.finish(j, "completed", string(rv), "")
}

// call runs the handler, turning a panic into an error with its stack.
func (w *Worker) call(ctx context.Context, j *Job) (result any, err error, stack string) {
	defer func() {
		if r := recover(); r != nil {
			msg := fmt.Sprint(r)
			err = errors.New(msg)
			stack = nodeTrace(err, msg, panicFrames())
		}
	}()
	result, err = w.h(ctx, j)
	if err != nil {
		stack = w.trace(err)
	}
	return result, err, stack
}

// trace is the Node-shaped stack trace stored for a failed attempt: the
// error's own frames when it carries some (WithStack, pkg/errors), else
// the handler that returned it and the worker frames that called it.
func (w *Worker) trace(err error) string {
	if pcs := errorCallers(err); len(pcs) > 0 {
		return nodeTrace(err, err.Error(), framesOf(pcs))
	}
	frames := callerFrames(1)
	if f, ok := funcFrame(w.h); ok {
		frames = append([]runtime.Frame{f}, frames...)
	}
	return nodeTrace(err, err.Error(), frames)
}

// fail retries the job when its attempts and backoff allow, else fails it.
func (w *Worker) fail(j *Job, err error, reason, stack string) step {
	traces := append(append([]string(nil), j.Stacktrace...), stack)
	if l := j.opts.StackTraceLimit; l != nil {
		traces = limitTraces(traces, *l)
	}
	st, _ := json.Marshal(traces)
	if !IsUnrecoverable(err) && j.AttemptsMade+1 < j.opts.Attempts {
		delay, retry, why := w.backoff(j, err)
		if retry {
			code, rerr := retryScript.Run(w.cmdCtx(), w.rdb, w.k.all, w.k.base, j.ID, j.token,
				time.Now().UnixMilli(), delay.Milliseconds(), reason, string(st)).Int64()
			if rerr == nil && code < 0 {
				rerr = scriptError(code, j.ID, "retry")
			}
			if rerr != nil {
				w.report(fmt.Errorf("bullmq: worker %s: %w", w.k.name, rerr))
			}
			return step{}
		}
		if why != "" {
			reason = why
		}
	}
	return w.finish(j, "failed", reason, string(st))
}

// limitTraces keeps what Node's stackTraceLimit keeps: none for 0, else
// traces.slice(-limit) (the last limit traces; a negative limit drops the
// first -limit).
func limitTraces(traces []string, limit int) []string {
	switch {
	case limit == 0:
		return []string{}
	case limit > 0 && len(traces) > limit:
		return traces[len(traces)-limit:]
	case limit < 0:
		if -limit >= len(traces) {
			return []string{}
		}
		return traces[-limit:]
	}
	return traces
}

// backoff returns the delay before j's next attempt, or retry false when
// the job must fail for good (a custom strategy said so, with why empty,
// or there is no strategy for its type, with why the reason Node gives).
func (w *Worker) backoff(j *Job, jobErr error) (delay time.Duration, retry bool, why string) {
	b := j.opts.Backoff
	if b == nil {
		return 0, true, ""
	}
	if d, ok := b.delayFor(j.AttemptsMade + 1); ok {
		// Node retries unless a strategy returns -1; a built-in one with a
		// negative delay can.
		return max(d, 0), d != -time.Millisecond, ""
	}
	if w.opts.BackoffStrategy == nil {
		typ := b.Type
		if typ == "" {
			typ = "undefined" // a Node backoff object without a type
		}
		return 0, false, "Unknown backoff strategy " + typ +
			".\n      If a custom backoff strategy is used, specify it when the queue is created."
	}
	defer func() {
		if r := recover(); r != nil {
			delay, retry, why = 0, false, fmt.Sprintf("backoff strategy %s panicked: %v", b.Type, r)
		}
	}()
	d := w.opts.BackoffStrategy(j.AttemptsMade+1, b.Type, jobErr, j)
	if d < 0 {
		return 0, false, ""
	}
	return d, true, ""
}

// finish moves the job to completed or failed and, unless the worker is
// closing, fetches the next job in the same script.
func (w *Worker) finish(j *Job, target, value, stacktrace string) step {
	keep := w.keepCompleted
	if target == "failed" {
		keep = w.keepFailed
	}
	fetchNext := ""
	if !w.closing.Load() && time.Now().UnixMilli() >= w.limitUntil.Load() {
		fetchNext = "1"
	}
	token := w.newToken()
	res, err := finishScript.Run(w.cmdCtx(), w.rdb, w.k.all, w.k.base, j.ID, j.token,
		time.Now().UnixMilli(), target, value, stacktrace, keep, fetchNext,
		token, w.opts.LockDuration.Milliseconds(), w.opts.Limiter.Max,
		w.opts.Limiter.Duration.Milliseconds(), w.opts.Name, w.opts.Metrics.MaxDataPoints).Result()
	if w.onFinish != nil {
		w.onFinish()
	}
	if err != nil {
		w.report(fmt.Errorf("bullmq: worker %s: move job %s to %s: %w", w.k.name, j.ID, target, err))
		return step{}
	}
	switch r := res.(type) {
	case int64:
		if r < 0 {
			w.report(scriptError(r, j.ID, "move to "+target))
		}
		return step{}
	case []any:
		next, limit, _, perr := w.parseFetch(r, token)
		w.report(perr)
		return step{next: next, limit: limit}
	}
	return step{}
}

// renewLocks extends the locks of running jobs every LockDuration/4.
func (w *Worker) renewLocks(ctx context.Context) {
	t := time.NewTicker(w.opts.LockDuration / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		args := make([]any, 0, 2+2*len(w.running))
		args = append(args, w.k.base, w.opts.LockDuration.Milliseconds())
		tokens := make(map[string]string, len(w.running))
		for id, tok := range w.running {
			args = append(args, id, tok)
			tokens[id] = tok
		}
		w.mu.Unlock()
		if len(args) == 2 {
			continue
		}
		failed, err := extendLocksScript.Run(w.cmdCtx(), w.rdb, w.k.all, args...).StringSlice()
		if err != nil {
			w.report(fmt.Errorf("bullmq: worker %s: extend locks: %w", w.k.name, err))
			continue
		}
		for _, id := range failed {
			// A job that finished after the snapshot above released its
			// lock itself: only a job still running lost it.
			if !w.stillRunning(id, tokens[id]) {
				continue
			}
			w.report(fmt.Errorf("%w: worker %s could not renew the lock of job %s", ErrLockMismatch, w.k.name, id))
		}
	}
}

// stalledLoop runs the stalled-job check at start and then once per
// StalledInterval. The next check is timed from the stalled-check key the
// last one left: StalledInterval after a check that ran (measured from its
// reply, so the key has expired by then), the key's remaining time after a
// check that found it (another worker, Go or Node, checked recently, or
// this worker's timer beat the key's expiry by a millisecond). A fixed
// ticker would land just before its own key expired and skip every other
// check.
func (w *Worker) stalledLoop(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_, next, err := w.stalledCheck()
		if err != nil {
			w.report(fmt.Errorf("bullmq: worker %s: stalled check: %w", w.k.name, err))
			next = w.opts.StalledInterval
		}
		t.Reset(min(next, w.opts.StalledInterval) + time.Millisecond)
	}
}

// checkStalled moves jobs whose lock expired back to wait (or fails those
// that stalled too often); it returns the ids it moved.
func (w *Worker) checkStalled() ([]string, error) {
	ids, _, err := w.stalledCheck()
	return ids, err
}

// stalledCheck runs the stalled check; next is how long until the next
// check may run.
func (w *Worker) stalledCheck() (ids []string, next time.Duration, err error) {
	res, err := stalledScript.Run(w.cmdCtx(), w.rdb, w.k.all, w.k.base, w.opts.MaxStalledCount,
		time.Now().UnixMilli(), w.opts.StalledInterval.Milliseconds()).Slice()
	if err != nil {
		return nil, 0, err
	}
	if len(res) == 0 {
		return nil, 0, fmt.Errorf("unexpected stalled check reply %v", res)
	}
	ms, _ := res[0].(int64)
	for _, v := range res[1:] {
		if s, ok := v.(string); ok {
			ids = append(ids, s)
		}
	}
	return ids, time.Duration(ms) * time.Millisecond, nil
}

// Close stops fetching, waits for the running jobs until ctx ends, then
// cancels their contexts and waits for their handlers to return, and
// releases the worker's connections. It returns nil, or ctx's error when
// it had to cancel jobs. Calling it again, or before Run, is safe.
func (w *Worker) Close(ctx context.Context) error {
	w.closing.Store(true)
	w.mu.Lock()
	state := w.state
	w.state = 2
	stop, cancelJ := w.stop, w.cancelJ
	w.mu.Unlock()
	if state == 0 || stop == nil {
		return nil // never ran
	}
	if stop != nil {
		stop()
	}
	select {
	case <-w.runDone:
		return nil
	case <-ctx.Done():
	}
	cancelJ()
	<-w.runDone
	return ctx.Err()
}
