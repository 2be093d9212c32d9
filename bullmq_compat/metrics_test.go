package bullmq

import (
	"fmt"
	"testing"
	"time"
)

// TestMetricsMatchNode: a Go worker with Metrics records what a Node worker
// with the metrics option records, read by Node's getMetrics: both queues
// start from the same state (2 jobs counted, the last data point 3 minutes
// ago), then each worker completes one job and fails one.
func TestMetricsMatchNode(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	nodeQ, goQ := name+"-node", name+"-go"
	seedTS := time.Now().Add(-3 * time.Minute).UnixMilli()
	for _, qn := range []string{nodeQ, goQ} {
		q, _ := NewQueue(rdb, qn, QueueOptions{})
		rdb.HSet(ctx, q.Key("metrics:completed"), "count", 2, "prevTS", seedTS, "prevCount", 0)
		for _, d := range []map[string]int{{"failTimes": 0}, {"failTimes": 9}} {
			if _, err := q.Add(ctx, "m", d, JobOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	runNode(t, 30*time.Second, "work", nodeParams(t, rdb, nodeQ, map[string]any{
		"count": 2, "workerOpts": map[string]any{"metrics": map[string]any{"maxDataPoints": 10}},
	}), nil)
	w := mustWorker(t, rdb, goQ, failingHandler("go"), WorkerOptions{Metrics: MetricsOptions{MaxDataPoints: 10}})
	startWorker(t, w)
	gq, _ := NewQueue(rdb, goQ, QueueOptions{})
	waitEvents(t, rdb, gq, 2, "completed", "failed")

	read := func(qn string) (string, string) {
		var nc nodeCounts
		runNode(t, 30*time.Second, "counts", nodeParams(t, rdb, qn, map[string]any{"metrics": true}), &nc)
		if nc.Metrics == nil {
			t.Fatalf("no metrics from Node for %s", qn)
		}
		for _, m := range []*nodeMetrics{&nc.Metrics.Completed, &nc.Metrics.Failed} {
			if age := time.Now().UnixMilli() - m.Meta.PrevTS; age < 0 || age > 50_000 {
				t.Errorf("%s: prevTS %d is %d ms old", qn, m.Meta.PrevTS, age)
			}
			m.Meta.PrevTS = 0
		}
		return fmt.Sprintf("%+v", nc.Metrics.Completed), fmt.Sprintf("%+v", nc.Metrics.Failed)
	}
	// The number of data points depends on the minute each job finished
	// in (3, or 4 if a minute boundary passed since the seed was taken).
	want := func(qn string) string {
		q, _ := NewQueue(rdb, qn, QueueOptions{})
		fin, _ := rdb.HGet(ctx, q.Key("1"), "finishedOn").Int64()
		n := fin/60000 - seedTS/60000
		data := make([]int64, n)
		data[n-1] = 2
		return fmt.Sprintf("{Meta:{Count:3 PrevTS:0 PrevCount:2} Data:%v Count:%d}", data, n)
	}
	nc, nf := read(nodeQ)
	gc, gf := read(goQ)
	t.Logf("node completed %s failed %s", nc, nf)
	if nc != want(nodeQ) {
		t.Fatalf("Node's own metrics %s, want %s (the test's expectation is wrong)", nc, want(nodeQ))
	}
	if gc != want(goQ) || nf != gf {
		t.Fatalf("getMetrics differs\n node: completed %s failed %s\n go:   completed %s failed %s", nc, nf, gc, gf)
	}
	// Go's reader agrees with Node's.
	m, err := gq.Metrics(ctx, "completed", 0, -1)
	if err != nil || fmt.Sprintf("{Meta:{Count:%d PrevTS:0 PrevCount:%d} Data:%v Count:%d}", m.Count, m.PrevCount, m.Data, m.Points) != gc {
		t.Fatalf("Queue.Metrics = %+v, %v; Node read %s", m, err, gc)
	}
}
