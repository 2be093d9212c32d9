package bullmq

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redisleak/redisleak/internal/redistest"
)

// nodeCounts is the output of the peer's "counts" mode.
type nodeCounts struct {
	Counts    map[string]int `json:"counts"`
	Completed []struct {
		ID           string          `json:"id"`
		Name         string          `json:"name"`
		Data         json.RawMessage `json:"data"`
		ReturnValue  json.RawMessage `json:"returnvalue"`
		AttemptsMade int             `json:"attemptsMade"`
		FinishedOn   int64           `json:"finishedOn"`
	} `json:"completed"`
	Failed []struct {
		ID           string   `json:"id"`
		FailedReason string   `json:"failedReason"`
		Stacktrace   []string `json:"stacktrace"`
		AttemptsMade int      `json:"attemptsMade"`
	} `json:"failed"`
	Workers      []string `json:"workers"`
	Paused       bool     `json:"paused"`
	RateLimitTTL int64    `json:"rateLimitTtl"`
	Metrics      *struct {
		Completed nodeMetrics `json:"completed"`
		Failed    nodeMetrics `json:"failed"`
	} `json:"metrics"`
	Jobs map[string]*struct {
		Name         string          `json:"name"`
		Data         json.RawMessage `json:"data"`
		Opts         map[string]any  `json:"opts"`
		Progress     json.RawMessage `json:"progress"`
		ReturnValue  json.RawMessage `json:"returnvalue"`
		AttemptsMade int             `json:"attemptsMade"`
		State        string          `json:"state"`
		Delay        int64           `json:"delay"`
		Priority     int             `json:"priority"`
		Logs         []string        `json:"logs"`
	} `json:"jobs"`
}

// nodeMetrics is what Node's Queue.getMetrics returns.
type nodeMetrics struct {
	Meta struct {
		Count     int64 `json:"count"`
		PrevTS    int64 `json:"prevTS"`
		PrevCount int64 `json:"prevCount"`
	} `json:"meta"`
	Data  []int64 `json:"data"`
	Count int64   `json:"count"`
}

type nodeEvent struct {
	Event        string          `json:"event"`
	JobID        string          `json:"jobId"`
	ReturnValue  json.RawMessage `json:"returnvalue"`
	FailedReason string          `json:"failedReason"`
	Data         json.RawMessage `json:"data"`
}

func TestInteropNodeAddsGoProcesses(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)

	// Node's QueueEvents watches what the Go worker does.
	events := startNode(t, 60*time.Second, "events", nodeParams(t, rdb, name, map[string]any{
		"names": []string{"completed", "failed", "progress"}, "count": 8,
	}), true)

	runNode(t, 30*time.Second, "add", nodeParams(t, rdb, name, map[string]any{"jobs": []map[string]any{
		{"name": "delayed", "data": map[string]any{"k": "d"}, "opts": map[string]any{"delay": 400}},
		{"name": "p3", "data": map[string]any{"k": 3}, "opts": map[string]any{"priority": 3}},
		{"name": "p1", "data": map[string]any{"k": 1}, "opts": map[string]any{"priority": 1}},
		{"name": "plain", "data": map[string]any{"k": "plain"}},
		{"name": "retry", "data": map[string]any{"failTimes": 2}, "opts": map[string]any{"attempts": 3, "backoff": map[string]any{"type": "fixed", "delay": 50}}},
		{"name": "custom", "data": []int{1, 2}, "opts": map[string]any{"jobId": "my-id"}},
		{"name": "doomed", "data": map[string]any{"failTimes": 9}, "opts": map[string]any{"attempts": 2, "backoff": 10}},
	}}), nil)

	var mu sync.Mutex
	var order []string
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		mu.Lock()
		order = append(order, j.Name)
		mu.Unlock()
		var d struct {
			FailTimes int `json:"failTimes"`
		}
		_ = json.Unmarshal(j.Data, &d)
		if j.AttemptsMade < d.FailTimes {
			return nil, fmt.Errorf("go fails attempt %d", j.AttemptsMade+1)
		}
		if j.Name == "plain" {
			if err := j.UpdateProgress(ctx, 42); err != nil {
				return nil, err
			}
			for _, l := range []string{"step 1", "step 2"} {
				if _, err := j.Log(ctx, l); err != nil {
					return nil, err
				}
			}
		}
		return map[string]any{"by": "go", "name": j.Name, "data": j.Data}, nil
	}, WorkerOptions{Name: "go-worker"})
	startWorker(t, w)

	var evs struct {
		Events []nodeEvent `json:"events"`
	}
	events.result(t, &evs)
	got := map[string]nodeEvent{}
	for _, e := range evs.Events {
		got[e.Event+":"+e.JobID] = e
	}
	if e, ok := got["completed:my-id"]; !ok || string(e.ReturnValue) != `{"by":"go","data":[1,2],"name":"custom"}` {
		t.Errorf("Node QueueEvents completed for my-id: %+v (all: %+v)", e, evs.Events)
	}
	if e, ok := got["progress:4"]; !ok || string(e.Data) != "42" {
		t.Errorf("Node QueueEvents progress for job 4: %+v", e)
	}
	if e, ok := got["failed:7"]; !ok || e.FailedReason != "go fails attempt 2" {
		t.Errorf("Node QueueEvents failed for job 7: %+v", e)
	}

	mu.Lock()
	gotOrder := strings.Join(order, " ")
	mu.Unlock()
	// Plain jobs first (FIFO), then by priority; the retries and the delayed
	// job come back later.
	// (The delayed job may be due before the first fetch, then it goes to
	// wait, ahead of the prioritized jobs.)
	var rest []string
	for _, n := range order {
		if n != "delayed" && n != "retry" && n != "doomed" {
			rest = append(rest, n)
		}
	}
	if !strings.HasPrefix(gotOrder, "plain retry custom doomed") || strings.Join(rest, " ") != "plain custom p1 p3" ||
		strings.Count(gotOrder, "retry") != 3 || strings.Count(gotOrder, "delayed") != 1 {
		t.Errorf("processing order = %s", gotOrder)
	}

	var nc nodeCounts
	runNode(t, 30*time.Second, "counts", nodeParams(t, rdb, name, map[string]any{"jobIds": []string{"4", "5", "7", "my-id"}}), &nc)
	if nc.Counts["completed"] != 6 || nc.Counts["failed"] != 1 || nc.Counts["wait"]+nc.Counts["active"]+nc.Counts["delayed"]+nc.Counts["prioritized"] != 0 {
		t.Errorf("Node getJobCounts = %v", nc.Counts)
	}
	if len(nc.Completed) != 6 {
		t.Fatalf("Node getCompleted: %d jobs", len(nc.Completed))
	}
	for _, c := range nc.Completed {
		var rv map[string]any
		if err := json.Unmarshal(c.ReturnValue, &rv); err != nil || rv["by"] != "go" || rv["name"] != c.Name || c.FinishedOn == 0 {
			t.Errorf("Node sees completed job %s %s with returnvalue %s", c.ID, c.Name, c.ReturnValue)
		}
	}
	if j := nc.Jobs["4"]; j == nil || strings.Join(j.Logs, ",") != "step 1,step 2" || string(j.Progress) != "42" {
		t.Errorf("Node sees job 4 (logs, progress) as %+v", j)
	}
	if j := nc.Jobs["5"]; j == nil || j.AttemptsMade != 3 || j.State != "completed" {
		t.Errorf("Node sees the retried job as %+v", j)
	}
	if len(nc.Failed) != 1 || nc.Failed[0].ID != "7" || nc.Failed[0].AttemptsMade != 2 || len(nc.Failed[0].Stacktrace) != 2 {
		t.Errorf("Node getFailed = %+v", nc.Failed)
	}
	if want := "bull:" + b64(name) + ":w:go-worker"; len(nc.Workers) != 1 || nc.Workers[0] != want {
		t.Errorf("Node getWorkers raw names = %v, want [%s]", nc.Workers, want)
	}
}

func TestInteropGoAddsNodeProcesses(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	qe, err := NewQueueEvents(ctx, rdb, name, QueueEventsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer qe.Close()

	jobs := []BulkJob{
		{Name: "delayed", Data: map[string]string{"k": "d"}, Opts: JobOptions{Delay: 300 * time.Millisecond}},
		{Name: "p2", Data: map[string]int{"k": 2}, Opts: JobOptions{Priority: 2}},
		{Name: "p1", Data: map[string]int{"k": 1}, Opts: JobOptions{Priority: 1}},
		{Name: "plain", Data: json.RawMessage(`{"raw": [1, 2]}`)},
		{Name: "retry", Data: map[string]int{"failTimes": 1}, Opts: JobOptions{Attempts: 2, Backoff: Backoff{Type: "exponential", Delay: 20 * time.Millisecond}}},
		{Name: "custom", Data: "s", Opts: JobOptions{JobID: "go:custom:1", RemoveOnComplete: KeepLast(100)}},
	}
	if _, err := q.AddBulk(ctx, jobs[:3]); err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs[3:] {
		if _, err := q.Add(ctx, j.Name, j.Data, j.Opts); err != nil {
			t.Fatal(err)
		}
	}
	node := startNode(t, 60*time.Second, "work", nodeParams(t, rdb, name, map[string]any{"count": len(jobs)}), true)

	// Go's QueueEvents sees Node's completions.
	completed := map[string]Event{}
	for len(completed) < len(jobs) {
		ev, err := qe.Next(ctx)
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if ev.Name == "completed" {
			completed[ev.JobID] = ev
		}
	}
	if ev := completed["go:custom:1"]; string(ev.ReturnValue) != `{"echo":"s","by":"node"}` {
		t.Errorf("completed event of go:custom:1 = %+v", ev)
	}

	var out struct {
		Seen []struct {
			ID           string          `json:"id"`
			Name         string          `json:"name"`
			Data         json.RawMessage `json:"data"`
			AttemptsMade int             `json:"attemptsMade"`
			Priority     int             `json:"priority"`
		} `json:"seen"`
	}
	node.result(t, &out)
	var order []string
	for _, s := range out.Seen {
		order = append(order, s.Name)
		if s.Name == "plain" && string(s.Data) != `{"raw":[1,2]}` {
			t.Errorf("Node read data %s", s.Data)
		}
		if s.Name == "p1" && s.Priority != 1 {
			t.Errorf("Node read priority %d", s.Priority)
		}
	}
	// Plain jobs in FIFO order before prioritized ones, by priority. The
	// delayed job (300ms) may be due before Node's first fetch: it then
	// goes to wait, ahead of the prioritized jobs.
	got := strings.Join(order, " ")
	var rest []string
	for _, n := range order {
		if n != "delayed" && n != "retry" {
			rest = append(rest, n)
		}
	}
	if strings.Join(rest, " ") != "plain custom p1 p2" || strings.Count(got, "retry") != 2 || strings.Count(got, "delayed") != 1 ||
		!strings.HasPrefix(got, "plain retry custom") {
		t.Errorf("Node processing order = %s", got)
	}
	for id, want := range map[string]string{"1": "delayed", "4": "plain", "5": "retry"} {
		j, err := q.GetJob(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if j.Name != want || j.FinishedOn.IsZero() || !strings.Contains(string(j.ReturnValue), `"by":"node"`) {
			t.Errorf("job %s as Go reads it: %+v", id, j)
		}
		if want == "retry" && (j.AttemptsMade != 2 || j.FailedReason != "node fails attempt 1") {
			t.Errorf("retried job: atm %d reason %q", j.AttemptsMade, j.FailedReason)
		}
	}
	c, _ := q.Counts(ctx)
	if c != (JobCounts{Completed: len(jobs)}) {
		t.Errorf("counts = %+v", c)
	}
}

// TestInteropMixedWorkers runs a Go and a Node worker on one queue: every job
// is processed exactly once between them.
func TestInteropMixedWorkers(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	const n = 200
	node := startNode(t, 60*time.Second, "work", nodeParams(t, rdb, name, map[string]any{"count": n, "concurrency": 4}), true)
	var mu sync.Mutex
	goDid := map[string]int{}
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		mu.Lock()
		goDid[j.ID]++
		mu.Unlock()
		time.Sleep(2 * time.Millisecond)
		return "go", nil
	}, WorkerOptions{Concurrency: 4})
	startWorker(t, w)
	for i := 0; i < n; i++ {
		if _, err := q.Add(ctx, "mixed", map[string]int{"i": i, "sleepMs": 2}, JobOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	redistest.WaitFor(t, 30*time.Second, "all jobs completed", func() bool {
		c, _ := q.Counts(ctx)
		return c.Completed == n
	})
	// The Node peer only counts its own completions: stop it.
	node.cancel()
	_ = node.cmd.Wait()
	mu.Lock()
	defer mu.Unlock()
	for id, k := range goDid {
		if k != 1 {
			t.Errorf("job %s processed %d times by Go", id, k)
		}
	}
	done := rdb.ZRange(ctx, q.Key("completed"), 0, -1).Val()
	sort.Strings(done)
	byNode := 0
	for _, id := range done {
		if rv := rdb.HGet(ctx, q.Key(id), "returnvalue").Val(); strings.Contains(rv, "node") {
			byNode++
			if goDid[id] != 0 {
				t.Errorf("job %s completed by Node was also run by Go", id)
			}
		}
	}
	if byNode == 0 || len(goDid) == 0 || byNode+len(goDid) != n {
		t.Errorf("Node did %d, Go did %d of %d", byNode, len(goDid), n)
	}
}

// TestInteropPause: a pause from Node holds Go workers back, a resume from
// Node releases them, and Node sees a pause made from Go.
func TestInteropPause(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	runNode(t, 30*time.Second, "meta", nodeParams(t, rdb, name, map[string]any{"pause": true}), nil)
	if c, _ := q.Counts(ctx); !c.Paused {
		t.Fatal("Go does not see Node's pause")
	}
	ran := make(chan string, 1)
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		ran <- j.ID
		return nil, nil
	}, WorkerOptions{})
	if _, err := q.Add(ctx, "held", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	startWorker(t, w)
	if j, _, _, err := w.fetch(); err != nil || j != nil {
		t.Fatalf("fetch while Node paused the queue: %v %v", j, err)
	}
	runNode(t, 30*time.Second, "meta", nodeParams(t, rdb, name, map[string]any{"resume": true}), nil)
	select {
	case <-ran:
	case <-ctx.Done():
		t.Fatal("the job did not run after Node resumed the queue")
	}
	if err := q.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	var nc nodeCounts
	runNode(t, 30*time.Second, "counts", nodeParams(t, rdb, name, nil), &nc)
	if !nc.Paused {
		t.Fatal("Node does not see Go's pause")
	}
}

// TestInteropNodeKeepPolicies: removeOnComplete / removeOnFail set by Node
// (object, number and boolean forms) are applied by the Go worker.
func TestInteropNodeKeepPolicies(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 30*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	jobs := []map[string]any{}
	for i := 0; i < 3; i++ {
		jobs = append(jobs, map[string]any{"name": "counted", "data": i, "opts": map[string]any{"removeOnComplete": map[string]any{"count": 1, "age": 3600}}})
	}
	jobs = append(jobs,
		map[string]any{"name": "numbered", "data": 0, "opts": map[string]any{"removeOnComplete": 5}},
		map[string]any{"name": "gone", "data": 0, "opts": map[string]any{"removeOnComplete": true}},
		map[string]any{"name": "fail-gone", "data": 0, "opts": map[string]any{"removeOnFail": true}},
	)
	runNode(t, 30*time.Second, "add", nodeParams(t, rdb, name, map[string]any{"jobs": jobs}), nil)
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		if j.Name == "fail-gone" {
			return nil, fmt.Errorf("no")
		}
		return nil, nil
	}, WorkerOptions{})
	startWorker(t, w)
	waitEvents(t, rdb, q, 6, "completed", "failed")
	// Jobs 1-3 keep the newest 1 each time one finishes, job 4 (keep 5)
	// trims nothing, job 5 is removed at once, job 6 removed on failure.
	done := rdb.ZRange(ctx, q.Key("completed"), 0, -1).Val()
	if strings.Join(done, " ") != "3 4" {
		t.Errorf("completed = %v, want [3 4]", done)
	}
	for _, id := range []string{"1", "2", "5", "6"} {
		if rdb.Exists(ctx, q.Key(id)).Val() != 0 {
			t.Errorf("job %s not removed", id)
		}
	}
	if n := rdb.ZCard(ctx, q.Key("failed")).Val(); n != 0 {
		t.Errorf("%d failed jobs kept", n)
	}
}
