package bullmq

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

type strategyCall struct {
	AttemptsMade int    `json:"attemptsMade"`
	Type         string `json:"type"`
	Err          string `json:"err"`
	ID           string `json:"id"`
}

// failingHandler fails the first data.failTimes attempts of a job.
func failingHandler(by string) Handler {
	return func(ctx context.Context, j *Job) (any, error) {
		var d struct {
			FailTimes int `json:"failTimes"`
		}
		_ = json.Unmarshal(j.Data, &d)
		if j.AttemptsMade < d.FailTimes {
			return nil, fmt.Errorf("%s fails attempt %d", by, j.AttemptsMade+1)
		}
		return by, nil
	}
}

// TestCustomBackoffNodeJobsOnGoWorker: jobs a Node producer added with
// custom backoff types are retried by a Go worker through
// WorkerOptions.BackoffStrategy, with Node's arguments; -1 fails for good;
// fixed and exponential stay built in.
func TestCustomBackoffNodeJobsOnGoWorker(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	runNode(t, 30*time.Second, "add", nodeParams(t, rdb, name, map[string]any{"jobs": []map[string]any{
		{"name": "jittery", "data": map[string]any{"failTimes": 2}, "opts": map[string]any{"attempts": 4, "backoff": map[string]any{"type": "jittery", "delay": 7}}},
		{"name": "giveup", "data": map[string]any{"failTimes": 9}, "opts": map[string]any{"attempts": 5, "backoff": map[string]any{"type": "giveup"}}},
		{"name": "fixed", "data": map[string]any{"failTimes": 1}, "opts": map[string]any{"attempts": 2, "backoff": 20}},
	}}), nil)
	var mu sync.Mutex
	var calls []strategyCall
	w, _ := NewWorker(rdb, name, failingHandler("go"), WorkerOptions{
		BackoffStrategy: func(attemptsMade int, typ string, err error, job *Job) time.Duration {
			mu.Lock()
			calls = append(calls, strategyCall{attemptsMade, typ, err.Error(), job.ID})
			mu.Unlock()
			if typ == "giveup" {
				return -1
			}
			return time.Duration(attemptsMade) * 30 * time.Millisecond
		},
	})
	startWorker(t, w)
	waitEvents(t, rdb, q, 3, "completed", "failed")
	for id, want := range map[string]map[string]string{
		"1": {"returnvalue": `"go"`, "atm": "3", "delay": "0"},
		"2": {"failedReason": "go fails attempt 1", "atm": "1"},
		"3": {"returnvalue": `"go"`, "atm": "2"},
	} {
		h := rdb.HGetAll(ctx, q.Key(id)).Val()
		for f, v := range want {
			if h[f] != v {
				t.Errorf("job %s: %s = %q, want %q (%v)", id, f, h[f], v, h)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := []strategyCall{
		{1, "jittery", "go fails attempt 1", "1"}, {1, "giveup", "go fails attempt 1", "2"},
		{2, "jittery", "go fails attempt 2", "1"},
	}
	if fmt.Sprint(sortCalls(calls)) != fmt.Sprint(sortCalls(want)) {
		t.Errorf("strategy calls = %+v, want %+v", calls, want)
	}
	// Positive results went through delayed (a 0 would retry at once).
	var delayed int
	for _, e := range waitEvents(t, rdb, q, 3, "delayed") {
		if e.Values["jobId"] == "1" {
			delayed++
		}
	}
	if delayed != 2 {
		t.Fatalf("job 1 went to delayed %d times, want 2", delayed)
	}
}

func mustWorker(t *testing.T, rdb redis.UniversalClient, name string, h Handler, o WorkerOptions) *Worker {
	t.Helper()
	w, err := NewWorker(rdb, name, h, o)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func sortCalls(c []strategyCall) []strategyCall {
	out := append([]strategyCall(nil), c...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if fmt.Sprint(out[j]) < fmt.Sprint(out[i]) {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestCustomBackoffGoJobsOnNodeWorker: Go's Add accepts a custom backoff
// type (Node accepts any), and a Node worker's settings.backoffStrategy
// gets it.
func TestCustomBackoffGoJobsOnNodeWorker(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	if _, err := q.Add(ctx, "jittery", map[string]int{"failTimes": 1},
		JobOptions{Attempts: 3, Backoff: Backoff{Type: "jittery", Delay: 5 * time.Millisecond}}); err != nil {
		t.Fatalf("Add with a custom backoff type: %v", err)
	}
	var out struct {
		StrategyCalls []strategyCall `json:"strategyCalls"`
	}
	runNode(t, 30*time.Second, "work", nodeParams(t, rdb, name, map[string]any{
		"count": 1, "customBackoff": map[string]int{"jittery": 25},
	}), &out)
	if len(out.StrategyCalls) != 1 || out.StrategyCalls[0] != (strategyCall{1, "jittery", "node fails attempt 1", "1"}) {
		t.Fatalf("Node strategy calls = %+v", out.StrategyCalls)
	}
	if h := rdb.HGetAll(ctx, q.Key("1")).Val(); h["atm"] != "2" || h["finishedOn"] == "" {
		t.Fatalf("job = %v", h)
	}
}

// TestUnknownBackoffWithoutStrategy: without a BackoffStrategy, a job with
// a custom type fails for good when its retry is due, with Node's reason.
func TestUnknownBackoffWithoutStrategy(t *testing.T) {
	rdb, _ := miniClient(t)
	name := uniqueQueue(t)
	ctx := ctxT(t, 30*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	if _, err := q.Add(ctx, "j", map[string]int{"failTimes": 5}, JobOptions{Attempts: 3, Backoff: Backoff{Type: "linear"}}); err != nil {
		t.Fatal(err)
	}
	startWorker(t, mustWorker(t, rdb, name, failingHandler("go"), WorkerOptions{}))
	waitEvents(t, rdb, q, 1, "failed")
	want := "Unknown backoff strategy linear.\n      If a custom backoff strategy is used, specify it when the queue is created."
	if r := rdb.HGet(ctx, q.Key("1"), "failedReason").Val(); r != want {
		t.Fatalf("failedReason = %q, want %q", r, want)
	}
}
