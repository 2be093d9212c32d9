package bullmq

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestMoveToWaitingChildrenFromGoHandler: a Go handler adds children to
// its own job (JobOptions.Parent), moves it to waiting-children and
// returns ErrWaitingChildren; a Node worker runs the children; the parent
// comes back to the Go handler, which finds no pending child and reads the
// children's values. One attempt is counted, as in Node.
func TestMoveToWaitingChildrenFromGoHandler(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	parents, children := name+"-p", name+"-c"
	pq, _ := NewQueue(rdb, parents, QueueOptions{})
	cq, _ := NewQueue(rdb, children, QueueOptions{})
	if _, err := pq.Add(ctx, "fan-out", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	result := make(chan string, 1)
	w, _ := NewWorker(rdb, parents, func(ctx context.Context, j *Job) (any, error) {
		if runs.Add(1) == 1 {
			for i := 0; i < 2; i++ {
				if _, err := cq.Add(ctx, "part", map[string]int{"i": i}, JobOptions{Parent: &ParentRef{ID: j.ID, Queue: pq.Qualified()}}); err != nil {
					return nil, err
				}
			}
			moved, err := j.MoveToWaitingChildren(ctx)
			if err != nil || !moved {
				return nil, fmt.Errorf("MoveToWaitingChildren = %v, %v", moved, err)
			}
			return nil, ErrWaitingChildren
		}
		moved, err := j.MoveToWaitingChildren(ctx)
		if err != nil || moved {
			return nil, fmt.Errorf("second MoveToWaitingChildren = %v, %v", moved, err)
		}
		vals, err := j.ChildrenValues(ctx)
		if err != nil {
			return nil, err
		}
		result <- fmt.Sprint(len(vals))
		return len(vals), nil
	}, WorkerOptions{})
	startWorker(t, w)
	waitEvents(t, rdb, pq, 1, "waiting-children")
	if n := rdb.ZCard(ctx, pq.Key("waiting-children")).Val(); n != 1 {
		t.Fatalf("%d parents in waiting-children", n)
	}
	runNode(t, 30*time.Second, "work", nodeParams(t, rdb, children, map[string]any{"count": 2}), nil)
	select {
	case got := <-result:
		if got != "2" {
			t.Fatalf("children values: %s", got)
		}
	case <-ctx.Done():
		t.Fatal("the parent did not come back")
	}
	waitEvents(t, rdb, pq, 1, "completed")
	var nc nodeCounts
	runNode(t, 30*time.Second, "counts", nodeParams(t, rdb, parents, map[string]any{"jobIds": []string{"1"}}), &nc)
	if j := nc.Jobs["1"]; j == nil || j.State != "completed" || j.AttemptsMade != 1 || string(j.ReturnValue) != "2" {
		t.Fatalf("Node sees the parent as %+v", j)
	}
	evs := waitEvents(t, rdb, pq, 1, "waiting-children")
	if evs[0].Values["prev"] != "active" {
		t.Fatalf("waiting-children event %v", evs[0].Values)
	}
}

// TestMoveToDelayedFromGoHandler: a Go handler moves its job to delayed
// and returns ErrDelayed; Node sees it delayed, and a Node worker runs it
// when due, with no attempt counted.
func TestMoveToDelayedFromGoHandler(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	if _, err := q.Add(ctx, "later", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	moved := make(chan struct{})
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		if err := j.MoveToDelayed(ctx, time.Now().Add(1500*time.Millisecond)); err != nil {
			return nil, err
		}
		close(moved)
		return nil, ErrDelayed
	}, WorkerOptions{OnError: func(err error) { t.Errorf("worker error: %v", err) }})
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	<-moved
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var nc nodeCounts
	runNode(t, 30*time.Second, "counts", nodeParams(t, rdb, name, map[string]any{"jobIds": []string{"1"}}), &nc)
	if j := nc.Jobs["1"]; j == nil || j.State != "delayed" || j.AttemptsMade != 0 || j.Delay <= 0 {
		t.Fatalf("Node sees the job as %+v, want delayed", j)
	}
	var out struct {
		Seen []struct {
			ID           string `json:"id"`
			AttemptsMade int    `json:"attemptsMade"`
		} `json:"seen"`
	}
	runNode(t, 30*time.Second, "work", nodeParams(t, rdb, name, map[string]any{"count": 1}), &out)
	if len(out.Seen) != 1 || out.Seen[0].ID != "1" || out.Seen[0].AttemptsMade != 0 {
		t.Fatalf("Node ran %+v", out.Seen)
	}
	if evs := waitEvents(t, rdb, q, 1, "delayed"); len(evs) != 1 {
		t.Fatalf("delayed events %v", evs)
	}
}

// TestRateLimitFromGoHandler: a Go handler rate-limits the queue
// (Worker.RateLimit) and returns ErrRateLimited: the job goes back to wait
// with no attempt counted, Node's getRateLimitTtl sees the limit, and the
// worker runs the job again only after the limit expired.
func TestRateLimitFromGoHandler(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	if _, err := q.Add(ctx, "api-call", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	const limit = 5 * time.Second
	var w *Worker
	var first time.Time
	limited := make(chan struct{})
	again := make(chan time.Duration, 1)
	w, _ = NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		if first.IsZero() {
			first = time.Now()
			if err := w.RateLimit(ctx, limit); err != nil {
				return nil, err
			}
			close(limited)
			return nil, ErrRateLimited
		}
		again <- time.Since(first)
		return "done", nil
	}, WorkerOptions{OnError: func(err error) { t.Errorf("worker error: %v", err) }})
	startWorker(t, w)
	<-limited
	waitEvents(t, rdb, q, 1, "waiting")
	var nc nodeCounts
	runNode(t, 30*time.Second, "counts", nodeParams(t, rdb, name, map[string]any{"jobIds": []string{"1"}}), &nc)
	lookedAt := time.Since(first)
	select {
	case d := <-again:
		t.Logf("ran again after %v", d)
		if d < limit-100*time.Millisecond {
			t.Fatalf("ran again after %v, before the %v limit expired", d, limit)
		}
	case <-ctx.Done():
		t.Fatal("the job did not run again")
	}
	if lookedAt < limit && (nc.RateLimitTTL <= 0 || nc.Jobs["1"] == nil || nc.Jobs["1"].State != "waiting" || nc.Jobs["1"].AttemptsMade != 0) {
		t.Errorf("Node saw (after %v) rate limit TTL %d and job %+v, want a TTL and the job waiting", lookedAt, nc.RateLimitTTL, nc.Jobs["1"])
	}
	waitEvents(t, rdb, q, 1, "completed")
	if h := rdb.HGetAll(ctx, q.Key("1")).Val(); h["atm"] != "1" || h["ats"] != "2" {
		t.Fatalf("job = %v, want 1 attempt made, 2 started", h)
	}
	evs := waitEvents(t, rdb, q, 2, "waiting")
	if evs[1].Values["prev"] != "active" {
		t.Errorf("second waiting event %v", evs[1].Values)
	}
}

// TestMovedSentinelWithoutMoveFails: returning ErrDelayed without moving
// the job is an ordinary failure, not a job left active until it stalls.
func TestMovedSentinelWithoutMoveFails(t *testing.T) {
	rdb, _ := miniClient(t)
	name := uniqueQueue(t)
	ctx := ctxT(t, 30*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	if _, err := q.Add(ctx, "x", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	startWorker(t, mustWorker(t, rdb, name, func(ctx context.Context, j *Job) (any, error) {
		return nil, ErrDelayed
	}, WorkerOptions{}))
	waitEvents(t, rdb, q, 1, "failed")
	if r := rdb.HGet(ctx, q.Key("1"), "failedReason").Val(); !strings.Contains(r, "did not move") {
		t.Fatalf("failedReason %q", r)
	}
}
