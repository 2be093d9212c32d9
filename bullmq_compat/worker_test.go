package bullmq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/holdtest"
	"github.com/redisleak/redisleak/internal/redistest"
)

func TestNewWorkerRejectsBadInput(t *testing.T) {
	rdb, _ := miniClient(t)
	h := func(context.Context, *Job) (any, error) { return nil, nil }
	for _, tc := range []struct {
		name  string
		rdb   redis.UniversalClient
		queue string
		h     Handler
		opts  WorkerOptions
	}{
		{"empty queue", rdb, "", h, WorkerOptions{}},
		{"nil client", nil, "q", h, WorkerOptions{}},
		{"nil handler", rdb, "q", nil, WorkerOptions{}},
		{"negative concurrency", rdb, "q", h, WorkerOptions{Concurrency: -1}},
		{"negative lock", rdb, "q", h, WorkerOptions{LockDuration: -time.Second}},
		{"limiter without duration", rdb, "q", h, WorkerOptions{Limiter: RateLimiter{Max: 1}}},
		{"space in name", rdb, "q", h, WorkerOptions{Name: "a b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewWorker(tc.rdb, tc.queue, tc.h, tc.opts); !errors.Is(err, ErrInvalidOptions) {
				t.Fatalf("err = %v, want ErrInvalidOptions", err)
			}
		})
	}
}

// collector records finished jobs from the events stream.
func waitEvents(t *testing.T, rdb *redis.Client, q *Queue, n int, names ...string) []redis.XMessage {
	t.Helper()
	var got []redis.XMessage
	redistest.WaitFor(t, 15*time.Second, fmt.Sprintf("%d %v events", n, names), func() bool {
		got = got[:0]
		for _, m := range rdb.XRange(context.Background(), q.Key("events"), "-", "+").Val() {
			for _, name := range names {
				if m.Values["event"] == name {
					got = append(got, m)
				}
			}
		}
		return len(got) >= n
	})
	return got
}

func TestWorkerCompletesJobs(t *testing.T) {
	rdb, name := realClient(t)
	ctx := context.Background()
	q, _ := NewQueue(rdb, name, QueueOptions{})
	// A client of its own, instrumented, on which each handler takes a
	// connection with its context (one at a time: probeMu).
	// Closed after the worker (cleanups run last first).
	probe := redis.NewClient(clientOptions(rdb.Options().Addr))
	t.Cleanup(func() { _ = probe.Close() })
	tr, err := redisleak.Instrument(probe, redisleak.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	var probeMu sync.Mutex
	var probeErrs []error
	var marked []redisleak.Leak
	w, err := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		probeMu.Lock()
		if h, err := holdtest.HoldWith(ctx, probe, tr); err != nil {
			probeErrs = append(probeErrs, err)
		} else if h.LongLivedBy == redisleak.LongLivedMark {
			marked = append(marked, h)
		}
		probeMu.Unlock()
		var d struct{ N int }
		if err := json.Unmarshal(j.Data, &d); err != nil {
			return nil, err
		}
		return map[string]int{"double": 2 * d.N}, nil
	}, WorkerOptions{Concurrency: 4, Name: "gw"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 20; i++ {
		if _, err := q.Add(ctx, "calc", map[string]int{"n": i}, JobOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	startWorker(t, w)
	waitEvents(t, rdb, q, 20, "completed")
	c, _ := q.Counts(ctx)
	if c != (JobCounts{Completed: 20}) {
		t.Fatalf("counts = %+v", c)
	}
	h := rdb.HGetAll(ctx, q.Key("7")).Val()
	if h["returnvalue"] != `{"double":14}` || h["atm"] != "1" || h["ats"] != "1" || h["pb"] != "gw" || h["finishedOn"] == "" || h["processedOn"] == "" {
		t.Fatalf("job 7 = %v", h)
	}
	if rdb.Exists(ctx, q.Key("7:lock")).Val() != 0 {
		t.Fatal("lock left behind")
	}
	probeMu.Lock()
	errs, longLived := probeErrs, marked
	probeMu.Unlock()
	if len(errs) != 0 {
		t.Fatalf("taking a connection with the handler context: %v", errs)
	}
	if len(longLived) != 0 {
		t.Fatalf("handler context carries the long-lived mark: its holds %v", longLived)
	}
	// The blocking connection is named as Node expects.
	list := rdb.ClientList(ctx).Val()
	if !strings.Contains(list, "name="+w.ClientName()+" ") || w.ClientName() != "bull:"+b64(name)+":w:gw" {
		t.Fatalf("client %q not in CLIENT LIST:\n%s", w.ClientName(), list)
	}
	evs := waitEvents(t, rdb, q, 1, "drained")
	if len(evs) == 0 {
		t.Fatal("no drained event")
	}
}

func TestWorkerRetriesWithBackoff(t *testing.T) {
	rdb, name := realClient(t)
	ctx := context.Background()
	q, _ := NewQueue(rdb, name, QueueOptions{})
	var mu sync.Mutex
	var starts []time.Time
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		mu.Lock()
		starts = append(starts, time.Now())
		mu.Unlock()
		if j.AttemptsMade < 2 {
			return nil, fmt.Errorf("boom %d", j.AttemptsMade+1)
		}
		return "ok", nil
	}, WorkerOptions{})
	if _, err := q.Add(ctx, "flaky", nil, JobOptions{Attempts: 3, Backoff: Backoff{Type: "exponential", Delay: 100 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	startWorker(t, w)
	waitEvents(t, rdb, q, 1, "completed")
	h := rdb.HGetAll(ctx, q.Key("1")).Val()
	if h["atm"] != "3" || h["ats"] != "3" || h["returnvalue"] != `"ok"` || h["failedReason"] != "boom 2" {
		t.Fatalf("job = %v", h)
	}
	var st []string
	if err := json.Unmarshal([]byte(h["stacktrace"]), &st); err != nil || len(st) != 2 {
		t.Fatalf("stacktrace = %q", h["stacktrace"])
	}
	mu.Lock()
	defer mu.Unlock()
	if d := starts[1].Sub(starts[0]); d < 100*time.Millisecond {
		t.Fatalf("first backoff %v < 100ms", d)
	}
	if d := starts[2].Sub(starts[1]); d < 200*time.Millisecond {
		t.Fatalf("second backoff %v < 200ms (exponential)", d)
	}
	var delayed int
	for _, m := range rdb.XRange(ctx, q.Key("events"), "-", "+").Val() {
		switch m.Values["event"] {
		case "delayed":
			delayed++
		case "failed":
			t.Fatalf("a retried attempt wrote a failed event: %v", m.Values)
		}
	}
	if delayed != 2 {
		t.Fatalf("%d delayed events, want 2", delayed)
	}
}

func TestWorkerFailsForGood(t *testing.T) {
	rdb, name := realClient(t)
	ctx := context.Background()
	q, _ := NewQueue(rdb, name, QueueOptions{})
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		switch j.Name {
		case "panic":
			panic("handler exploded")
		case "unrecoverable":
			return nil, Unrecoverable(errors.New("give up"))
		}
		return nil, errors.New("always")
	}, WorkerOptions{})
	for _, tc := range []struct {
		name     string
		attempts int
	}{{"plain", 2}, {"panic", 1}, {"unrecoverable", 5}} {
		if _, err := q.Add(ctx, tc.name, nil, JobOptions{Attempts: tc.attempts}); err != nil {
			t.Fatal(err)
		}
	}
	startWorker(t, w)
	waitEvents(t, rdb, q, 3, "failed")
	for id, want := range map[string]struct {
		reason string
		atm    string
	}{"1": {"always", "2"}, "2": {"handler exploded", "1"}, "3": {"give up", "1"}} {
		h := rdb.HGetAll(ctx, q.Key(id)).Val()
		if h["failedReason"] != want.reason || h["atm"] != want.atm || h["finishedOn"] == "" {
			t.Errorf("job %s = %v, want reason %q atm %s", id, h, want.reason, want.atm)
		}
	}
	var st []string
	_ = json.Unmarshal([]byte(rdb.HGet(ctx, q.Key("2"), "stacktrace").Val()), &st)
	if len(st) != 1 || !strings.Contains(st[0], "handler exploded") || !strings.Contains(st[0], "worker_test.go") {
		t.Errorf("panic stacktrace = %q", st)
	}
	// Node writes retries-exhausted when atm >= attempts: not for the
	// unrecoverable job (atm 1 < attempts 5).
	if ids := eventJobIDs(waitEvents(t, rdb, q, 2, "retries-exhausted")); ids != "1 2" {
		t.Errorf("retries-exhausted for jobs %s, want 1 2", ids)
	}
	if c, _ := q.Counts(ctx); c != (JobCounts{Failed: 3}) {
		t.Errorf("counts = %+v", c)
	}
}

func TestWorkerOrderDelayedAndPriority(t *testing.T) {
	rdb, name := realClient(t)
	ctx := context.Background()
	q, _ := NewQueue(rdb, name, QueueOptions{})
	var mu sync.Mutex
	var order []string
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		mu.Lock()
		order = append(order, j.Name)
		mu.Unlock()
		return nil, nil
	}, WorkerOptions{})
	added := time.Now()
	for _, a := range []struct {
		name string
		o    JobOptions
	}{
		{"delayed", JobOptions{Delay: time.Second}},
		{"p9", JobOptions{Priority: 9}},
		{"p1", JobOptions{Priority: 1}},
		{"plain1", JobOptions{}},
		{"p5", JobOptions{Priority: 5}},
		{"plain2", JobOptions{}},
		{"lifo", JobOptions{LIFO: true}},
	} {
		if _, err := q.Add(ctx, a.name, nil, a.o); err != nil {
			t.Fatal(err)
		}
	}
	startWorker(t, w)
	waitEvents(t, rdb, q, 7, "completed")
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(order, " "); got != "lifo plain1 plain2 p1 p5 p9 delayed" {
		t.Fatalf("order = %s", got)
	}
	h := rdb.HGetAll(ctx, q.Key("1")).Val()
	if h["delay"] != "0" || parseMillis(h["processedOn"]).Sub(added) < time.Second {
		t.Fatalf("delayed job = %v", h)
	}
}

func TestPauseAndResume(t *testing.T) {
	rdb, name := realClient(t)
	ctx := context.Background()
	q, _ := NewQueue(rdb, name, QueueOptions{})
	var ran atomic.Int32
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		ran.Add(1)
		return nil, nil
	}, WorkerOptions{})
	startWorker(t, w)
	if err := q.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Add(ctx, "held", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	if c, _ := q.Counts(ctx); !c.Paused || c.Waiting != 1 {
		t.Fatalf("counts while paused = %+v", c)
	}
	if rdb.Exists(ctx, q.Key("marker")).Val() != 0 {
		t.Fatal("paused queue has a marker")
	}
	// The worker is blocked on the marker; a fetch (as any Node worker would
	// do) must still find nothing.
	if j, _, _, err := w.fetch(); err != nil || j != nil {
		t.Fatalf("fetch on a paused queue: %v, %v", j, err)
	}
	if ran.Load() != 0 {
		t.Fatal("a job ran while paused")
	}
	if err := q.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, rdb, q, 1, "completed")
	waitEvents(t, rdb, q, 1, "paused")
	waitEvents(t, rdb, q, 1, "resumed")
}

func TestCloseCancelsRunningHandlerAndRequeues(t *testing.T) {
	rdb, name := realClient(t)
	ctx := context.Background()
	q, _ := NewQueue(rdb, name, QueueOptions{})
	started := make(chan struct{})
	var sawCancel atomic.Bool
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		close(started)
		<-ctx.Done()
		sawCancel.Store(true)
		return nil, ctx.Err()
	}, WorkerOptions{})
	if _, err := q.Add(ctx, "long", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	<-started
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := w.Close(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v, want DeadlineExceeded", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if !sawCancel.Load() {
		t.Fatal("handler context not cancelled")
	}
	// The interrupted job is back in wait, not failed.
	c, _ := q.Counts(ctx)
	if c != (JobCounts{Waiting: 1}) {
		t.Fatalf("counts = %+v", c)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := w.Run(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close = %v", err)
	}
	if n := len(rdb.ClientList(ctx).Val()); strings.Contains(rdb.ClientList(ctx).Val(), w.ClientName()) {
		t.Fatalf("blocking connection still open after Close (%d)", n)
	}
}

func TestRunReturnsContextError(t *testing.T) {
	rdb, name := realClient(t)
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) { return nil, nil }, WorkerOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	redistest.WaitFor(t, 5*time.Second, "the worker's blocking connection", func() bool {
		return strings.Contains(rdb.ClientList(context.Background()).Val(), "name="+w.ClientName()+" ")
	})
	start := time.Now()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 3*time.Second { // the wait itself lasts DrainDelay, 5s
		t.Fatalf("Run took %v to stop: the blocking wait was not interrupted", d)
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestProgressAndQueueEvents(t *testing.T) {
	rdb, name := realClient(t)
	ctx := ctxT(t, 20*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	qe, err := NewQueueEvents(ctx, rdb, name, QueueEventsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer qe.Close()
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		if err := j.UpdateProgress(ctx, map[string]int{"pct": 50}); err != nil {
			return nil, err
		}
		return []int{1, 2}, nil
	}, WorkerOptions{})
	if _, err := q.Add(ctx, "p", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	startWorker(t, w)
	var names []string
	for {
		ev, err := qe.Next(ctx)
		if err != nil {
			t.Fatalf("Next: %v (so far %v)", err, names)
		}
		names = append(names, ev.Name)
		if ev.Name == "progress" && (ev.JobID != "1" || string(ev.Data) != `{"pct":50}`) {
			t.Fatalf("progress event = %+v", ev)
		}
		if ev.Name == "completed" {
			if ev.JobID != "1" || string(ev.ReturnValue) != "[1,2]" || ev.Prev != "active" {
				t.Fatalf("completed event = %+v", ev)
			}
			break
		}
	}
	if got := strings.Join(names, " "); got != "added waiting active progress completed" {
		t.Fatalf("events = %s", got)
	}
	if p := rdb.HGet(ctx, q.Key("1"), "progress").Val(); p != `{"pct":50}` {
		t.Fatalf("progress = %s", p)
	}
	// Close interrupts a blocked Next.
	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := qe.Next(context.Background()); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond) // let Next block (nothing to signal on)
	if err := qe.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Next after Close = %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not interrupt Next")
	}
}

func TestRemoveOnCompleteAndFail(t *testing.T) {
	rdb, name := realClient(t)
	ctx := context.Background()
	q, _ := NewQueue(rdb, name, QueueOptions{})
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		if j.Name == "fail" {
			return nil, errors.New("no")
		}
		return nil, nil
	}, WorkerOptions{RemoveOnComplete: KeepLast(2), RemoveOnFail: RemoveJob()})
	for i := 0; i < 5; i++ {
		if _, err := q.Add(ctx, "ok", i, JobOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.Add(ctx, "keep", nil, JobOptions{RemoveOnComplete: KeepAll()}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Add(ctx, "fail", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	startWorker(t, w)
	waitEvents(t, rdb, q, 7, "completed", "failed")
	done := rdb.ZRange(ctx, q.Key("completed"), 0, -1).Val()
	// Jobs 1..5 keep the newest 2; job 6 (KeepAll) is kept, and its own
	// policy trims nothing.
	if len(done) != 3 || done[2] != "6" {
		t.Fatalf("completed = %v", done)
	}
	for _, id := range []string{"1", "2", "3", "7"} {
		if rdb.Exists(ctx, q.Key(id)).Val() != 0 {
			t.Errorf("job %s not removed", id)
		}
	}
	if rdb.ZCard(ctx, q.Key("failed")).Val() != 0 {
		t.Errorf("failed job kept")
	}
}

func b64(s string) string { return (&keys{prefix: "x", name: s}).clientName("")[2:] }

func eventJobIDs(ms []redis.XMessage) string {
	var ids []string
	for _, m := range ms {
		ids = append(ids, fmt.Sprint(m.Values["jobId"]))
	}
	sort.Strings(ids)
	return strings.Join(ids, " ")
}

// TestLockRenewalKeepsLongJobs: a job running for several lock durations
// keeps its lock, so another worker's stalled checks leave it alone.
func TestLockRenewalKeepsLongJobs(t *testing.T) {
	rdb, name := realClient(t)
	ctx := ctxT(t, 30*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	var runs atomic.Int32
	var errs atomic.Int32
	// 2 s locks renewed every 500 ms: a renewal may be up to 1.5 s late (CI
	// runs the packages' race-enabled tests side by side on 2 cores).
	long, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		runs.Add(1)
		time.Sleep(5 * time.Second) // 2.5 lock durations
		return "done", nil
	}, WorkerOptions{LockDuration: 2 * time.Second, SkipStalledCheck: true, OnError: func(err error) {
		errs.Add(1)
		t.Errorf("worker error: %v", err)
	}})
	if _, err := q.Add(ctx, "long", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	startWorker(t, long)
	redistest.WaitFor(t, 5*time.Second, "the job to start", func() bool { return runs.Load() == 1 })
	// A second worker checks for stalled jobs every 100ms meanwhile.
	checker, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		runs.Add(1)
		return nil, nil
	}, WorkerOptions{StalledInterval: 100 * time.Millisecond})
	startWorker(t, checker)
	waitEvents(t, rdb, q, 1, "completed")
	if n := runs.Load(); n != 1 {
		t.Fatalf("the job ran %d times", n)
	}
	if h := rdb.HGetAll(ctx, q.Key("1")).Val(); h["stc"] != "" || h["returnvalue"] != `"done"` {
		t.Fatalf("job = %v", h)
	}
}

// TestCloseWaitsForRunningJobs: within its context, Close lets running
// handlers finish and their jobs complete; nothing new is fetched.
func TestCloseWaitsForRunningJobs(t *testing.T) {
	rdb, name := realClient(t)
	ctx := ctxT(t, 30*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	started := make(chan struct{}, 2)
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		started <- struct{}{}
		select {
		case <-time.After(300 * time.Millisecond):
			return "finished", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}, WorkerOptions{Concurrency: 2})
	for i := 0; i < 2; i++ {
		if _, err := q.Add(ctx, "slow", i, JobOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	<-started
	<-started
	if _, err := q.Add(ctx, "late", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	c, _ := q.Counts(ctx)
	if c != (JobCounts{Completed: 2, Waiting: 1}) {
		t.Fatalf("counts = %+v, want the 2 running jobs completed and the late one waiting", c)
	}
}

// TestLegacyMarkerInWaitIsDiscarded: a pre-5.0 marker entry ("0:<ms>") in
// wait is dropped, and the job behind it is fetched.
func TestLegacyMarkerInWaitIsDiscarded(t *testing.T) {
	rdb, name := realClient(t)
	ctx := ctxT(t, 10*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	if _, err := q.Add(ctx, "real", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	rdb.RPush(ctx, q.Key("wait"), "0:1700000000000") // at the processing end
	w, _ := NewWorker(rdb, name, func(context.Context, *Job) (any, error) { return nil, nil }, WorkerOptions{})
	j, _, _, err := w.fetch()
	if err != nil || j == nil || j.ID != "1" {
		t.Fatalf("fetch = %+v, %v", j, err)
	}
	if a := rdb.LRange(ctx, q.Key("active"), 0, -1).Val(); len(a) != 1 || a[0] != "1" {
		t.Fatalf("active = %v", a)
	}
}
