package bullmq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
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
	if _, err := q.Add(ctx, "x", 1, JobOptions{Deduplication: &Deduplication{}}); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("empty deduplication id: %v", err)
	}
}

// dedupState is what TestDedupModesMatchNode compares after each add: the
// events of the add, the jobs that exist (id: name), and the
// deduplication keys (value and whether they expire).
func dedupState(t *testing.T, rdb *redis.Client, q *Queue, fromEvent string) (string, string) {
	t.Helper()
	ctx := context.Background()
	var evs []string
	last := fromEvent
	for _, m := range rdb.XRange(ctx, q.Key("events"), "("+fromEvent, "+").Val() {
		v := m.Values
		evs = append(evs, fmt.Sprintf("%v:%v:%v", v["event"], v["jobId"], v["deduplicatedJobId"]))
		last = m.ID
	}
	var jobs []string
	for _, z := range []string{"wait", "delayed", "prioritized"} {
		var ids []string
		if z == "wait" {
			ids = rdb.LRange(ctx, q.Key(z), 0, -1).Val()
		} else {
			ids = rdb.ZRange(ctx, q.Key(z), 0, -1).Val()
		}
		for _, id := range ids {
			jobs = append(jobs, z+":"+id+"="+rdb.HGet(ctx, q.Key(id), "name").Val())
		}
	}
	sort.Strings(jobs)
	for _, d := range []string{"d", "e", "f"} {
		k := q.Key("de:" + d)
		v, err := rdb.Get(ctx, k).Result()
		if err != nil {
			continue
		}
		ttl := rdb.PTTL(ctx, k).Val()
		jobs = append(jobs, fmt.Sprintf("de:%s=%s(expires:%v)", d, v, ttl > 0))
	}
	return fmt.Sprintf("events %v; %v", evs, jobs), last
}

// TestDedupModesMatchNode runs the same adds through Node's queue.add and
// Go's Add, one by one, on two queues, and compares after each: the
// returned id, the events, the jobs, the deduplication keys. The adds
// cover extend, replace (of a delayed job, and of a job no longer
// delayed), and plain TTL.
func TestDedupModesMatchNode(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 120*time.Second)
	nq, _ := NewQueue(rdb, name+"-node", QueueOptions{})
	gq, _ := NewQueue(rdb, name+"-go", QueueOptions{})
	min := time.Minute
	steps := []struct {
		name string
		node map[string]any
		opts JobOptions
	}{
		{"a1", map[string]any{"delay": 60000, "deduplication": map[string]any{"id": "d", "ttl": 30000, "extend": true, "replace": true}},
			JobOptions{Delay: min, Deduplication: &Deduplication{ID: "d", TTL: 30 * time.Second, Extend: true, Replace: true}}},
		{"a2 replaces a1", map[string]any{"delay": 60000, "deduplication": map[string]any{"id": "d", "ttl": 30000, "replace": true}},
			JobOptions{Delay: min, Deduplication: &Deduplication{ID: "d", TTL: 30 * time.Second, Replace: true}}},
		{"a3 extends", map[string]any{"deduplication": map[string]any{"id": "d", "ttl": 30000, "extend": true}},
			JobOptions{Deduplication: &Deduplication{ID: "d", TTL: 30 * time.Second, Extend: true}}},
		{"b1", map[string]any{"deduplication": map[string]any{"id": "e", "ttl": 30000}},
			JobOptions{Deduplication: &Deduplication{ID: "e", TTL: 30 * time.Second}}},
		{"b2 deduplicated", map[string]any{"deduplication": map[string]any{"id": "e", "ttl": 30000}},
			JobOptions{Deduplication: &Deduplication{ID: "e", TTL: 30 * time.Second}}},
		{"c1", map[string]any{"deduplication": map[string]any{"id": "f"}}, JobOptions{Deduplication: &Deduplication{ID: "f"}}},
		{"c2 no replace of a waiting job", map[string]any{"deduplication": map[string]any{"id": "f", "replace": true}},
			JobOptions{Deduplication: &Deduplication{ID: "f", Replace: true}}},
		{"c3 keepLastIfActive, holder not active", map[string]any{"deduplication": map[string]any{"id": "f", "keepLastIfActive": true}},
			JobOptions{Deduplication: &Deduplication{ID: "f", KeepLastIfActive: true}}},
	}
	nFrom, gFrom := "0", "0"
	for _, s := range steps {
		var out struct {
			Results []struct {
				OK    bool   `json:"ok"`
				ID    string `json:"id"`
				Error string `json:"error"`
			} `json:"results"`
		}
		runNode(t, 30*time.Second, "tryAdd", nodeParams(t, rdb, nq.Name(), map[string]any{"jobs": []map[string]any{
			{"name": s.name, "data": map[string]int{}, "opts": s.node}}}), &out)
		j, err := gq.Add(ctx, s.name, map[string]int{}, s.opts)
		if err != nil || len(out.Results) != 1 || !out.Results[0].OK {
			t.Fatalf("%s: Go %v, Node %+v", s.name, err, out.Results)
		}
		if j.ID != out.Results[0].ID {
			t.Errorf("%s: Add returned %s, Node's add %s", s.name, j.ID, out.Results[0].ID)
		}
		var ns, gs string
		ns, nFrom = dedupState(t, rdb, nq, nFrom)
		gs, gFrom = dedupState(t, rdb, gq, gFrom)
		t.Logf("%s: %s", s.name, gs)
		if ns != gs {
			t.Errorf("%s: after the add\n node: %s\n go:   %s", s.name, ns, gs)
		}
	}
}

// TestKeepLastIfActiveWithNode: while a job holding a keepLastIfActive
// deduplication id is active, later adds are kept (the last one wins) and
// added when it finishes. Both ways: Node adds while a Go worker runs the
// holder, Go adds while a Node worker runs it.
func TestKeepLastIfActiveWithNode(t *testing.T) {
	needNode(t)
	keep := map[string]any{"deduplication": map[string]any{"id": "k", "keepLastIfActive": true}}
	keepGo := JobOptions{Deduplication: &Deduplication{ID: "k", KeepLastIfActive: true}}
	t.Run("Go worker, Node adds", func(t *testing.T) {
		rdb, name := realClient(t)
		ctx := ctxT(t, 60*time.Second)
		q, _ := NewQueue(rdb, name, QueueOptions{})
		if _, err := q.Add(ctx, "v1", map[string]int{"v": 1}, keepGo); err != nil {
			t.Fatal(err)
		}
		started, release := make(chan struct{}), make(chan struct{})
		var mu sync.Mutex
		var ran []string
		w := mustWorker(t, rdb, name, func(ctx context.Context, j *Job) (any, error) {
			mu.Lock()
			ran = append(ran, j.ID+"="+string(j.Data))
			n := len(ran)
			mu.Unlock()
			if n == 1 {
				close(started)
				<-release
			}
			return nil, nil
		}, WorkerOptions{})
		startWorker(t, w)
		<-started
		var out struct {
			IDs []string `json:"ids"`
		}
		runNode(t, 30*time.Second, "add", nodeParams(t, rdb, name, map[string]any{"jobs": []map[string]any{
			{"name": "v2", "data": map[string]int{"v": 2}, "opts": keep},
			{"name": "v3", "data": map[string]int{"v": 3}, "opts": keep},
		}}), &out)
		if fmt.Sprint(out.IDs) != "[1 1]" {
			t.Errorf("Node's adds returned %v, want the active holder 1 twice", out.IDs)
		}
		close(release)
		waitEvents(t, rdb, q, 2, "completed")
		mu.Lock()
		got := fmt.Sprint(ran)
		mu.Unlock()
		if got != `[1={"v":1} 3={"v":3}]` {
			t.Fatalf("ran %s, want job 1 then the last kept add (id 3, v 3)", got)
		}
		if rdb.Exists(ctx, q.Key("dn:k"), q.Key("de:k")).Val() != 0 {
			t.Errorf("deduplication keys left: %v", rdb.Keys(ctx, q.Key("d*")).Val())
		}
	})
	t.Run("Node worker, Go adds", func(t *testing.T) {
		rdb, name := realClient(t)
		ctx := ctxT(t, 60*time.Second)
		q, _ := NewQueue(rdb, name, QueueOptions{})
		if _, err := q.Add(ctx, "v1", map[string]int{"v": 1, "sleepMs": 4000}, keepGo); err != nil {
			t.Fatal(err)
		}
		node := startNode(t, 60*time.Second, "work", nodeParams(t, rdb, name, map[string]any{"count": 2}), true)
		redistest.WaitFor(t, 20*time.Second, "Node to take job 1", func() bool {
			return rdb.LLen(ctx, q.Key("active")).Val() == 1
		})
		var ids []string
		for _, v := range []int{2, 3} {
			j, err := q.Add(ctx, fmt.Sprintf("v%d", v), map[string]int{"v": v}, keepGo)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, j.ID)
		}
		if rdb.LLen(ctx, q.Key("active")).Val() != 1 {
			t.Skip("job 1 finished before the adds (machine too slow for a 4 s job)")
		}
		if fmt.Sprint(ids) != "[1 1]" {
			t.Errorf("Go's adds returned %v, want the active holder 1 twice", ids)
		}
		var out struct {
			Seen []struct {
				ID   string          `json:"id"`
				Data json.RawMessage `json:"data"`
			} `json:"seen"`
		}
		node.result(t, &out)
		if len(out.Seen) != 2 || out.Seen[1].ID != "3" || string(out.Seen[1].Data) != `{"v":3}` {
			t.Fatalf("Node ran %+v, want job 1 then job 3 with v 3", out.Seen)
		}
	})
}

// TestDedupTTLOutlivesItsJob: a deduplication id with a TTL is not
// released when its job finishes (Node deletes only keys without expiry),
// so adds within the TTL are still deduplicated, by Go's Add and Node's.
func TestDedupTTLOutlivesItsJob(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 30*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	dd := JobOptions{Deduplication: &Deduplication{ID: "ttl", TTL: time.Minute}}
	first, err := q.Add(ctx, "a", nil, dd)
	if err != nil {
		t.Fatal(err)
	}
	startWorker(t, mustWorker(t, rdb, name, func(context.Context, *Job) (any, error) { return nil, nil }, WorkerOptions{}))
	waitEvents(t, rdb, q, 1, "completed")
	if ttl := rdb.PTTL(ctx, q.Key("de:ttl")).Val(); ttl <= 0 {
		t.Fatalf("deduplication key released when its job finished (pttl %v)", ttl)
	}
	again, err := q.Add(ctx, "b", nil, dd)
	if err != nil || !again.Duplicate || again.ID != first.ID {
		t.Fatalf("Go add within the TTL: %+v %v", again, err)
	}
	var out struct {
		IDs []string `json:"ids"`
	}
	runNode(t, 30*time.Second, "add", nodeParams(t, rdb, name, map[string]any{"jobs": []map[string]any{
		{"name": "c", "opts": map[string]any{"deduplication": map[string]any{"id": "ttl", "ttl": 60000}}},
	}}), &out)
	if fmt.Sprint(out.IDs) != "["+first.ID+"]" {
		t.Fatalf("Node add within the TTL returned %v, want [%s]", out.IDs, first.ID)
	}
}
