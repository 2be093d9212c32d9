package bullmq

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redisleak/redisleak/internal/redistest"
)

// TestInteropNodeJobSchedulers: jobs of Node job schedulers (every and
// cron) run on a Go worker, which keeps the schedules going; a Node worker
// then takes over the iterations the Go worker produced.
func TestInteropNodeJobSchedulers(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	runNode(t, 30*time.Second, "schedule", nodeParams(t, rdb, name, map[string]any{
		"id": "every-300", "repeat": map[string]any{"every": 300},
		"template": map[string]any{"name": "tick", "data": map[string]int{"a": 1}, "opts": map[string]any{"attempts": 2}},
	}), nil)
	runNode(t, 30*time.Second, "schedule", nodeParams(t, rdb, name, map[string]any{
		"id": "cron-1s", "repeat": map[string]any{"pattern": "*/1 * * * * *"},
		"template": map[string]any{"name": "cron", "data": map[string]int{"b": 2}},
	}), nil)

	var mu sync.Mutex
	runs := map[string][]string{}
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		mu.Lock()
		runs[j.Name] = append(runs[j.Name], j.ID)
		mu.Unlock()
		if j.RepeatJobKey == "" {
			t.Errorf("job %s without rjk", j.ID)
		}
		return j.Name, nil
	}, WorkerOptions{Concurrency: 2, OnError: func(err error) { t.Errorf("worker error: %v", err) }})
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	redistest.WaitFor(t, 20*time.Second, "4 every-jobs and 2 cron jobs", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(runs["tick"]) >= 4 && len(runs["cron"]) >= 2
	})
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	ticks, crons := append([]string(nil), runs["tick"]...), append([]string(nil), runs["cron"]...)
	mu.Unlock()
	// Iterations stay on the 300ms grid (a late fetch skips the slots it
	// missed, as in Node).
	var prev int64
	for i, id := range ticks {
		ms, err := strconv.ParseInt(strings.TrimPrefix(id, "repeat:every-300:"), 10, 64)
		if err != nil {
			t.Fatalf("tick id %q", id)
		}
		if i > 0 && (ms-prev)%300 != 0 {
			t.Errorf("ticks %v: not 300ms apart", ticks)
		}
		prev = ms
	}
	for _, id := range crons {
		ms, _ := strconv.ParseInt(strings.TrimPrefix(id, "repeat:cron-1s:"), 10, 64)
		if ms%1000 != 0 {
			t.Errorf("cron id %q not on a whole second", id)
		}
	}
	// The next iterations wait in delayed, as Node would have left them.
	next := rdb.ZRange(ctx, "bull:"+name+":repeat", 0, -1).Val()
	if len(next) != 2 {
		t.Fatalf("repeat zset = %v", next)
	}
	nextTick := "repeat:every-300:" + strconv.FormatInt(int64(rdb.ZScore(ctx, "bull:"+name+":repeat", "every-300").Val()), 10)
	var nc nodeCounts
	runNode(t, 30*time.Second, "counts", nodeParams(t, rdb, name, map[string]any{"jobIds": []string{nextTick}}), &nc)
	j := nc.Jobs[nextTick]
	if j == nil || j.Name != "tick" || string(j.Data) != `{"a":1}` || j.Opts["attempts"] != 2.0 {
		t.Fatalf("Node reads the Go-scheduled iteration as %+v", j)
	}
	if r, _ := j.Opts["repeat"].(map[string]any); r == nil || r["every"] != 300.0 || r["count"].(float64) < 4 {
		t.Fatalf("repeat opts = %v", j.Opts["repeat"])
	}
	// A Node worker continues the schedule from where Go left it.
	var out struct {
		Seen []struct {
			ID   string          `json:"id"`
			Name string          `json:"name"`
			Data json.RawMessage `json:"data"`
		} `json:"seen"`
	}
	runNode(t, 30*time.Second, "work", nodeParams(t, rdb, name, map[string]any{"count": 3}), &out)
	sawNext := false
	for _, s := range out.Seen {
		if s.ID == nextTick {
			sawNext = true
		}
	}
	if !sawNext {
		t.Fatalf("Node did not run %s: %+v", nextTick, out.Seen)
	}
}
