package bullmq

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// seedLegacyRepeatable writes what a BullMQ 5 repeatable job leaves behind:
// an entry in the repeat set under a name:id:endDate:tz:pattern key, and a
// waiting job whose rjk is that key.
func seedLegacyRepeatable(t *testing.T, ctx context.Context, q *Queue, key, jobID string, next int64) {
	t.Helper()
	rdb := q.rdb
	rdb.ZAdd(ctx, q.Key("repeat"), redis.Z{Score: float64(next), Member: key})
	rdb.HSet(ctx, q.Key(jobID), "name", "report", "data", `{"legacy":true}`,
		"opts", `{"attempts":0,"repeat":{"pattern":"*/5 * * * *","count":1},"jobId":"`+jobID+`"}`,
		"timestamp", time.Now().UnixMilli(), "delay", 0, "priority", 0, "rjk", key)
	rdb.LPush(ctx, q.Key("wait"), jobID)
	rdb.ZAdd(ctx, q.Key("marker"), redis.Z{Score: 0, Member: "0"})
}

// TestLegacyRepeatableJobs: a job a BullMQ 5 repeatable left in the queue
// runs on a Go worker as on a Node worker: processed once, no next
// iteration, and the same error (Node's message, sent to OnError);
// Queue.LegacyRepeatables lists the legacy entries for a migration. A
// job scheduler whose id merely looks like a legacy key is still
// scheduled, as Node tells them apart by the scheduler's `ic` field.
func TestLegacyRepeatableJobs(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	nodeQ, goQ := name+"-node", name+"-go"
	key := "report:nightly::UTC:*/5 * * * *"
	next := time.Now().Add(time.Hour).UnixMilli()
	nq, _ := NewQueue(rdb, nodeQ, QueueOptions{})
	gq, _ := NewQueue(rdb, goQ, QueueOptions{})
	seedLegacyRepeatable(t, ctx, nq, key, "repeat:0cc175b9c0f1b6a831c399e269772661:1700000000000", next)
	seedLegacyRepeatable(t, ctx, gq, key, "repeat:0cc175b9c0f1b6a831c399e269772661:1700000000000", next)

	var nodeOut struct {
		Seen   []struct{ ID string } `json:"seen"`
		Errors []string              `json:"errors"`
	}
	runNode(t, 30*time.Second, "work", nodeParams(t, rdb, nodeQ, map[string]any{"count": 1}), &nodeOut)
	if len(nodeOut.Seen) != 1 || len(nodeOut.Errors) != 1 {
		t.Fatalf("Node: ran %+v, errors %q", nodeOut.Seen, nodeOut.Errors)
	}

	var mu sync.Mutex
	var goErrs []string
	ran := make(chan string, 4)
	w := mustWorker(t, rdb, goQ, func(ctx context.Context, j *Job) (any, error) {
		ran <- j.ID
		return "ok", nil
	}, WorkerOptions{OnError: func(err error) {
		mu.Lock()
		goErrs = append(goErrs, err.Error())
		mu.Unlock()
	}})
	startWorker(t, w)
	waitEvents(t, rdb, gq, 1, "completed")
	mu.Lock()
	errs := append([]string(nil), goErrs...)
	mu.Unlock()
	if len(errs) != 1 || errs[0] != nodeOut.Errors[0] {
		t.Errorf("Go worker errors %q, want Node's %q", errs, nodeOut.Errors)
	}
	for _, q := range []*Queue{nq, gq} {
		c, _ := q.Counts(ctx)
		if c.Completed != 1 || c.Delayed+c.Waiting != 0 {
			t.Errorf("%s: counts %+v, want the job completed and no next iteration", q.Name(), c)
		}
	}
	legacy, err := gq.LegacyRepeatables(ctx)
	if err != nil || len(legacy) != 1 {
		t.Fatalf("LegacyRepeatables = %+v, %v", legacy, err)
	}
	if l := legacy[0]; l.Key != key || l.Name != "report" || l.ID != "nightly" || l.EndDate != 0 || l.TZ != "UTC" ||
		l.Pattern != "*/5 * * * *" || l.Every != 0 || l.Next.UnixMilli() != next {
		t.Errorf("legacy entry %+v", l)
	}

	// A scheduler with a legacy-shaped id is a scheduler.
	sq := name + "-sched"
	runNode(t, 30*time.Second, "schedule", nodeParams(t, rdb, sq, map[string]any{
		"id": "odd:id::UTC:300", "repeat": map[string]any{"every": 300},
		"template": map[string]any{"name": "tick"},
	}), nil)
	var once sync.Once
	ticks := make(chan struct{})
	sw := mustWorker(t, rdb, sq, func(ctx context.Context, j *Job) (any, error) { return nil, nil },
		WorkerOptions{OnError: func(err error) { t.Errorf("worker error: %v", err) }})
	startWorker(t, sw)
	sqq, _ := NewQueue(rdb, sq, QueueOptions{})
	go func() {
		for ctx.Err() == nil {
			if c, _ := sqq.Counts(ctx); c.Completed >= 2 {
				once.Do(func() { close(ticks) })
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	select {
	case <-ticks:
	case <-ctx.Done():
		t.Fatal("the scheduler with a legacy-shaped id did not go on")
	}
	if legacy, _ := sqq.LegacyRepeatables(ctx); len(legacy) != 0 {
		t.Errorf("a job scheduler listed as legacy: %+v", legacy)
	}
}
