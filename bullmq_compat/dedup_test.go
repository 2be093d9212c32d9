package bullmq

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDeduplication(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 30*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	dd := &Deduplication{ID: "user-42"}
	first, err := q.Add(ctx, "sync", 1, JobOptions{Deduplication: dd})
	if err != nil || first.Duplicate {
		t.Fatalf("first add: %+v %v", first, err)
	}
	again, err := q.Add(ctx, "sync", 2, JobOptions{Deduplication: dd})
	if err != nil || !again.Duplicate || again.ID != first.ID {
		t.Fatalf("second add: %+v %v", again, err)
	}
	if v := rdb.HGet(ctx, q.Key(first.ID), "deid").Val(); v != "user-42" {
		t.Fatalf("deid = %q", v)
	}
	// Node's add with the same deduplication id is deduplicated too.
	var out struct {
		IDs []string `json:"ids"`
	}
	runNode(t, 30*time.Second, "add", nodeParams(t, rdb, name, map[string]any{"jobs": []map[string]any{
		{"name": "sync", "data": 3, "opts": map[string]any{"deduplication": map[string]any{"id": "user-42"}}},
	}}), &out)
	if len(out.IDs) != 1 || out.IDs[0] != first.ID {
		t.Fatalf("Node add returned %v, want [%s]", out.IDs, first.ID)
	}
	if c, _ := q.Counts(ctx); c.Waiting != 1 {
		t.Fatalf("counts = %+v", c)
	}
	evs := waitEvents(t, rdb, q, 2, "deduplicated")
	if evs[0].Values["jobId"] != first.ID || evs[0].Values["deduplicationId"] != "user-42" {
		t.Fatalf("deduplicated event = %v", evs[0].Values)
	}
	// Finishing the job releases the id.
	w, _ := NewWorker(rdb, name, func(context.Context, *Job) (any, error) { return nil, nil }, WorkerOptions{})
	startWorker(t, w)
	waitEvents(t, rdb, q, 1, "completed")
	if rdb.Exists(ctx, q.Key("de:user-42")).Val() != 0 {
		t.Fatal("deduplication key left after the job finished")
	}
	// (Delayed, so that the running worker does not finish it and release
	// the id before the TTL is checked.)
	next, err := q.Add(ctx, "sync", 4, JobOptions{Delay: time.Hour, Deduplication: &Deduplication{ID: "user-42", TTL: time.Minute}})
	if err != nil || next.Duplicate {
		t.Fatalf("add after release: %+v %v", next, err)
	}
	if ttl := rdb.PTTL(ctx, q.Key("de:user-42")).Val(); ttl <= 0 || ttl > time.Minute {
		t.Fatalf("dedup key ttl = %v", ttl)
	}
	if _, err := q.Add(ctx, "x", 1, JobOptions{Deduplication: &Deduplication{}}); !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("empty deduplication id: %v", err)
	}
}
