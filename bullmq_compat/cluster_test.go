package bullmq

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redisleak/redisleak/internal/redistest"
)

// TestCluster runs a queue and a worker on a 3-master Redis Cluster with the
// hash tag in the prefix, so that all keys of the queue share one slot.
func TestCluster(t *testing.T) {
	cl := redistest.NewCluster(t, 3)
	rdb := cl.Client(t)
	ctx := ctxT(t, 30*time.Second)
	name := uniqueQueue(t)
	opts := QueueOptions{Prefix: "{bull}"}
	q, err := NewQueue(rdb, name, opts)
	if err != nil {
		t.Fatal(err)
	}
	if k := q.Key("wait"); k != "{bull}:"+name+":wait" {
		t.Fatalf("key = %s", k)
	}
	qe, err := NewQueueEvents(ctx, rdb, name, QueueEventsOptions{Prefix: "{bull}"})
	if err != nil {
		t.Fatal(err)
	}
	defer qe.Close()
	w, err := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		return strings.ToUpper(j.Name), nil
	}, WorkerOptions{Prefix: "{bull}", Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	startWorker(t, w)
	for _, o := range []JobOptions{{}, {Priority: 2}, {Delay: 100 * time.Millisecond}, {Attempts: 2}} {
		if _, err := q.Add(ctx, "job", nil, o); err != nil {
			t.Fatal(err)
		}
	}
	for done := 0; done < 4; {
		ev, err := qe.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Name == "completed" {
			if string(ev.ReturnValue) != `"JOB"` {
				t.Fatalf("completed = %+v", ev)
			}
			done++
		}
	}
	c, err := q.Counts(ctx)
	if err != nil || c != (JobCounts{Completed: 4}) {
		t.Fatalf("counts = %+v, %v", c, err)
	}
	// The worker's blocking connection is on the node that serves the slot.
	node, err := rdb.MasterForKey(ctx, q.Key("marker"))
	if err != nil {
		t.Fatal(err)
	}
	if list := node.ClientList(ctx).Val(); !strings.Contains(list, "name="+w.ClientName()+" ") {
		t.Fatalf("worker connection not on the slot's node:\n%s", list)
	}

	// Without a hash tag the keys spread over slots: the script fails
	// with an error rather than half-working.
	bad, _ := NewQueue(rdb, name, QueueOptions{})
	if _, err := bad.Add(ctx, "x", nil, JobOptions{}); err == nil {
		t.Fatal("Add without a hash tag on a cluster succeeded")
	}
}

// TestClusterInteropWithNode: on a cluster, with the hash tag in the
// prefix on both sides, Node adds → Go processes and Go adds → Node
// processes.
func TestClusterInteropWithNode(t *testing.T) {
	needNode(t)
	cl := redistest.NewCluster(t, 3)
	rdb := cl.Client(t)
	ctx := ctxT(t, 60*time.Second)
	name := uniqueQueue(t)
	var nodes []map[string]any
	for _, n := range cl.Nodes {
		nodes = append(nodes, map[string]any{"host": "127.0.0.1", "port": n.Port})
	}
	params := func(extra map[string]any) map[string]any {
		p := map[string]any{"cluster": nodes, "queue": name, "prefix": "{bull}"}
		for k, v := range extra {
			p[k] = v
		}
		return p
	}
	runNode(t, 30*time.Second, "add", params(map[string]any{"jobs": []map[string]any{
		{"name": "from-node", "data": map[string]int{"n": 1}, "opts": map[string]any{"priority": 2}},
		{"name": "from-node-delayed", "data": map[string]int{"n": 2}, "opts": map[string]any{"delay": 100}},
	}}), nil)
	got := make(chan string, 2)
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		got <- j.Name
		return "go", nil
	}, WorkerOptions{Prefix: "{bull}"})
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	for i := 0; i < 2; i++ {
		select {
		case <-got:
		case <-ctx.Done():
			t.Fatal("Go worker did not process Node's jobs on the cluster")
		}
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	q, _ := NewQueue(rdb, name, QueueOptions{Prefix: "{bull}"})
	if _, err := q.Add(ctx, "from-go", map[string]int{"n": 3}, JobOptions{Attempts: 2}); err != nil {
		t.Fatal(err)
	}
	var out struct {
		Seen []struct {
			Name string `json:"name"`
		} `json:"seen"`
	}
	runNode(t, 30*time.Second, "work", params(map[string]any{"count": 1}), &out)
	if len(out.Seen) != 1 || out.Seen[0].Name != "from-go" {
		t.Fatalf("Node worker saw %+v", out.Seen)
	}
	if c, err := q.Counts(ctx); err != nil || c != (JobCounts{Completed: 3}) {
		t.Fatalf("counts = %+v, %v", c, err)
	}
}
