package bullmq

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestAddValidationMatchesNode adds the same jobs through Node's queue.add
// (the peer) and Go's Add, each on its own queue, and compares case by
// case: accepted or rejected, and for accepted jobs the stored opts,
// delay and priority fields and where the job went (wait, prioritized with
// its priority, or delayed).
func TestAddValidationMatchesNode(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	nodeQ, goQ := name+"-node", name+"-go"
	cases := []struct {
		name string
		node map[string]any
		opts JobOptions
	}{
		{"plain", map[string]any{}, JobOptions{}},
		{"negative delay", map[string]any{"delay": -1000}, JobOptions{Delay: -time.Second}},
		{"priority -1", map[string]any{"priority": -1}, JobOptions{Priority: -1}},
		{"priority max", map[string]any{"priority": MaxPriority}, JobOptions{Priority: MaxPriority}},
		{"priority too high", map[string]any{"priority": MaxPriority + 1}, JobOptions{Priority: MaxPriority + 1}},
		{"negative attempts", map[string]any{"attempts": -1}, JobOptions{Attempts: -1}},
		{"negative backoff delay", map[string]any{"attempts": 2, "backoff": map[string]any{"type": "fixed", "delay": -1}},
			JobOptions{Attempts: 2, Backoff: Backoff{Type: "fixed", Delay: -time.Millisecond}}},
		{"negative numeric backoff", map[string]any{"backoff": -5}, JobOptions{Backoff: Backoff{Delay: -5 * time.Millisecond}}},
		{"exponential backoff", map[string]any{"backoff": map[string]any{"type": "exponential", "delay": 100}},
			JobOptions{Backoff: Backoff{Type: "exponential", Delay: 100 * time.Millisecond}}},
		{"custom backoff type", map[string]any{"backoff": map[string]any{"type": "jittery", "delay": 10}},
			JobOptions{Backoff: Backoff{Type: "jittery", Delay: 10 * time.Millisecond}}},
		{"jitter 1", map[string]any{"backoff": map[string]any{"type": "fixed", "delay": 10, "jitter": 1}},
			JobOptions{Backoff: Backoff{Type: "fixed", Delay: 10 * time.Millisecond, Jitter: 1}}},
		{"jitter 1.5", map[string]any{"backoff": map[string]any{"type": "fixed", "delay": 10, "jitter": 1.5}},
			JobOptions{Backoff: Backoff{Type: "fixed", Delay: 10 * time.Millisecond, Jitter: 1.5}}},
		{"jitter -0.1", map[string]any{"backoff": map[string]any{"type": "fixed", "delay": 10, "jitter": -0.1}},
			JobOptions{Backoff: Backoff{Type: "fixed", Delay: 10 * time.Millisecond, Jitter: -0.1}}},
		{"stackTraceLimit -1", map[string]any{"stackTraceLimit": -1}, JobOptions{StackTraceLimit: -1}},
		{"stackTraceLimit 3", map[string]any{"stackTraceLimit": 3}, JobOptions{StackTraceLimit: 3}},
		{"id 0", map[string]any{"jobId": "0"}, JobOptions{JobID: "0"}},
		{"id 0:a:b", map[string]any{"jobId": "0:a:b"}, JobOptions{JobID: "0:a:b"}},
		{"integer id", map[string]any{"jobId": "42"}, JobOptions{JobID: "42"}},
		{"negative integer id", map[string]any{"jobId": "-7"}, JobOptions{JobID: "-7"}},
		{"two-part id", map[string]any{"jobId": "a:b"}, JobOptions{JobID: "a:b"}},
		{"three-part id", map[string]any{"jobId": "a:b:c"}, JobOptions{JobID: "a:b:c"}},
		{"id 007", map[string]any{"jobId": "007"}, JobOptions{JobID: "007"}},
		{"id 1e3", map[string]any{"jobId": "1e3"}, JobOptions{JobID: "1e3"}},
		{"dedup without id", map[string]any{"deduplication": map[string]any{"id": ""}}, JobOptions{Deduplication: &Deduplication{}}},
		{"dedup negative ttl", map[string]any{"deduplication": map[string]any{"id": "d1", "ttl": -5}},
			JobOptions{Deduplication: &Deduplication{ID: "d1", TTL: -5 * time.Millisecond}}},
		{"fpof and idof", map[string]any{"failParentOnFailure": true, "ignoreDependencyOnFailure": true},
			JobOptions{FailParentOnFailure: true, IgnoreDependencyOnFailure: true}},
		{"removeOnComplete negative age", map[string]any{"removeOnComplete": map[string]any{"age": -1, "count": 2}},
			JobOptions{RemoveOnComplete: &KeepJobs{Age: -time.Second, Count: 2}}},
		{"removeOnFail negative limit", map[string]any{"removeOnFail": map[string]any{"age": 10, "count": 2, "limit": -1}},
			JobOptions{RemoveOnFail: &KeepJobs{Age: 10 * time.Second, Count: 2, Limit: -1}}},
		{"delay and priority", map[string]any{"delay": 60000, "priority": 3}, JobOptions{Delay: time.Minute, Priority: 3}},
		{"lifo and priority", map[string]any{"lifo": true, "priority": 2}, JobOptions{LIFO: true, Priority: 2}},
		{"lifo", map[string]any{"lifo": true}, JobOptions{LIFO: true}},
	}
	var jobs []map[string]any
	for _, c := range cases {
		jobs = append(jobs, map[string]any{"name": c.name, "data": map[string]int{"n": 1}, "opts": c.node})
	}
	var out struct {
		Results []struct {
			OK    bool   `json:"ok"`
			ID    string `json:"id"`
			Error string `json:"error"`
		} `json:"results"`
	}
	runNode(t, 30*time.Second, "tryAdd", nodeParams(t, rdb, nodeQ, map[string]any{"jobs": jobs}), &out)
	if len(out.Results) != len(cases) {
		t.Fatalf("node results: %+v", out.Results)
	}
	gq, _ := NewQueue(rdb, goQ, QueueOptions{})
	nq, _ := NewQueue(rdb, nodeQ, QueueOptions{})
	for i, c := range cases {
		nr := out.Results[i]
		j, err := gq.Add(ctx, c.name, map[string]int{"n": 1}, c.opts)
		if (err == nil) != nr.OK {
			t.Errorf("%s: Node ok=%v (%s), Go err=%v", c.name, nr.OK, nr.Error, err)
			continue
		}
		if err != nil {
			t.Logf("%s: both reject (Node: %s; Go: %v)", c.name, nr.Error, err)
			continue
		}
		if j.ID != nr.ID {
			t.Errorf("%s: ids Go %s, Node %s", c.name, j.ID, nr.ID)
			continue
		}
		ng, gg := storedJob(t, rdb, nq, nr.ID), storedJob(t, rdb, gq, j.ID)
		if !reflect.DeepEqual(ng, gg) {
			t.Errorf("%s: stored differently\n node: %v\n go:   %v", c.name, ng, gg)
		}
	}
}

// storedJob is what the comparison looks at: the stored opts (parsed),
// delay, priority, and where the job is.
func storedJob(t *testing.T, rdb *redis.Client, q *Queue, id string) map[string]any {
	t.Helper()
	ctx := context.Background()
	h := rdb.HGetAll(ctx, q.Key(id)).Val()
	var opts map[string]any
	if err := json.Unmarshal([]byte(h["opts"]), &opts); err != nil {
		t.Fatalf("job %s opts %q: %v", id, h["opts"], err)
	}
	place := "nowhere"
	if s, err := rdb.ZScore(ctx, q.Key("prioritized"), id).Result(); err == nil {
		place = fmt.Sprintf("prioritized:%v", math.Floor(s/(1<<32)))
	} else if _, err := rdb.ZScore(ctx, q.Key("delayed"), id).Result(); err == nil {
		place = "delayed"
	} else if _, err := rdb.LPos(ctx, q.Key("wait"), id, redis.LPosArgs{}).Result(); err == nil {
		place = "wait"
	}
	return map[string]any{"opts": opts, "delay": h["delay"], "priority": h["priority"], "place": place}
}

// TestLimitTracesFollowsNode: stackTraceLimit keeps what JavaScript's
// traces.slice(-limit) keeps (none for 0).
func TestLimitTracesFollowsNode(t *testing.T) {
	tr := []string{"a", "b", "c"}
	for limit, want := range map[int]string{0: "[]", 1: "[c]", 2: "[b c]", 5: "[a b c]", -1: "[b c]", -2: "[c]", -3: "[]", -9: "[]"} {
		if got := fmt.Sprint(limitTraces(append([]string(nil), tr...), limit)); got != want {
			t.Errorf("limit %d: %s, want %s", limit, got, want)
		}
	}
}
