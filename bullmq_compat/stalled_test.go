package bullmq

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
)

const helperEnv = "BULLMQ_TEST_HELPER_QUEUE"

// helperMain is a Go worker process for TestStalledJobOfKilledWorker: it
// takes one job, says so on stdout and hangs until it is killed.
func helperMain() int {
	rdb := redis.NewClient(clientOptions(os.Getenv("BULLMQ_TEST_HELPER_ADDR")))
	w, err := NewWorker(rdb, os.Getenv(helperEnv), func(ctx context.Context, j *Job) (any, error) {
		fmt.Printf("started %s\n", j.ID)
		time.Sleep(time.Hour)
		return nil, nil
	}, WorkerOptions{LockDuration: time.Second, SkipStalledCheck: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := w.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// killedWorker runs helperMain in a child process until it has taken a job,
// then kills it (SIGKILL: no cleanup) and returns the job's id.
func killedWorker(t *testing.T, rdb *redis.Client, queue string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+queue, "BULLMQ_TEST_HELPER_ADDR="+rdb.Options().Addr)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if err != nil || !strings.HasPrefix(line, "started ") {
		t.Fatalf("helper worker: %q, %v; stderr: %s", line, err, stderr.String())
	}
	return strings.TrimSpace(strings.TrimPrefix(line, "started "))
}

func TestStalledJobOfKilledWorkerIsRecovered(t *testing.T) {
	t.Run("by a Go worker", func(t *testing.T) {
		rdb, name := realClient(t)
		ctx := ctxT(t, 30*time.Second)
		q, _ := NewQueue(rdb, name, QueueOptions{})
		if _, err := q.Add(ctx, "survivor", map[string]int{"n": 1}, JobOptions{}); err != nil {
			t.Fatal(err)
		}
		id := killedWorker(t, rdb, name)
		if c, _ := q.Counts(ctx); c.Active != 1 {
			t.Fatalf("after the kill: %+v, want the job active", c)
		}
		ran := make(chan string, 2)
		w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
			ran <- j.ID
			return "recovered", nil
		}, WorkerOptions{StalledInterval: 200 * time.Millisecond})
		startWorker(t, w)
		select {
		case got := <-ran:
			if got != id {
				t.Fatalf("ran job %s, want %s", got, id)
			}
		case <-ctx.Done():
			t.Fatal("the stalled job was not run again")
		}
		waitEvents(t, rdb, q, 1, "completed")
		h := rdb.HGetAll(ctx, q.Key(id)).Val()
		if h["stc"] != "1" || h["ats"] != "2" || h["returnvalue"] != `"recovered"` {
			t.Fatalf("job = %v", h)
		}
		if evs := waitEvents(t, rdb, q, 1, "stalled"); evs[0].Values["jobId"] != id {
			t.Fatalf("stalled event = %v", evs[0].Values)
		}
	})
	t.Run("by a Node worker", func(t *testing.T) {
		needNode(t)
		rdb, name := realClient(t)
		ctx := ctxT(t, 30*time.Second)
		q, _ := NewQueue(rdb, name, QueueOptions{})
		if _, err := q.Add(ctx, "survivor", map[string]int{"n": 2}, JobOptions{}); err != nil {
			t.Fatal(err)
		}
		id := killedWorker(t, rdb, name)
		var out struct {
			Seen []struct {
				ID string `json:"id"`
			} `json:"seen"`
		}
		runNode(t, 30*time.Second, "work", nodeParams(t, rdb, name, map[string]any{
			"count": 1, "workerOpts": map[string]any{"stalledInterval": 300},
		}), &out)
		if len(out.Seen) != 1 || out.Seen[0].ID != id {
			t.Fatalf("Node ran %+v, want job %s", out.Seen, id)
		}
		if rv := rdb.HGet(ctx, q.Key(id), "returnvalue").Val(); !strings.Contains(rv, "node") {
			t.Fatalf("returnvalue = %s", rv)
		}
	})
}

func TestJobStalledTooOftenFails(t *testing.T) {
	rdb, name := realClient(t)
	ctx := ctxT(t, 30*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	if _, err := q.Add(ctx, "fragile", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	// Simulate a worker that took the job and died twice: stc becomes 2 > 1.
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		t.Error("the handler ran for a job that stalled too often")
		return nil, nil
	}, WorkerOptions{StalledInterval: time.Minute, SkipStalledCheck: true})
	for i := 0; i < 2; i++ {
		j, _, _, err := w.fetch()
		if err != nil || j == nil {
			t.Fatalf("fetch: %v %v", j, err)
		}
		rdb.Del(ctx, q.Key(j.ID+":lock"), q.Key("stalled-check"))
		if _, err := w.checkStalled(); err != nil { // marks it
			t.Fatal(err)
		}
		rdb.Del(ctx, q.Key("stalled-check"))
		ids, err := w.checkStalled() // moves it
		if err != nil || len(ids) != 1 {
			t.Fatalf("stalled check moved %v, %v", ids, err)
		}
	}
	if d := rdb.HGet(ctx, q.Key("1"), "defa").Val(); d != "job stalled more than allowable limit" {
		t.Fatalf("defa = %q", d)
	}
	startWorker(t, w)
	waitEvents(t, rdb, q, 1, "failed")
	h := rdb.HGetAll(ctx, q.Key("1")).Val()
	if h["failedReason"] != "job stalled more than allowable limit" || h["defa"] != "" || h["atm"] != "1" {
		t.Fatalf("job = %v", h)
	}
}

// TestStalledCheckRunsEveryInterval: a lone Go worker runs the stalled
// check once per StalledInterval, as Node does. (It used to tick just
// before its own stalled-check key expired, skip, and so check only every
// other interval: stalled jobs came back one interval late.) The check
// stores its start time in stalled-check; the test reads those times and
// compares the median gap with the interval (the median, so that a few
// late ticks on a loaded machine do not matter).
func TestStalledCheckRunsEveryInterval(t *testing.T) {
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	const interval = 500 * time.Millisecond
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) { return nil, nil },
		WorkerOptions{StalledInterval: interval})
	key := w.k.key(kStalledCheck)
	startWorker(t, w)
	var starts []int64
	redistest.WaitFor(t, 50*time.Second, "8 stalled checks", func() bool {
		v, err := rdb.Get(ctx, key).Int64()
		if err == nil && (len(starts) == 0 || v != starts[len(starts)-1]) {
			starts = append(starts, v)
		}
		return len(starts) >= 8
	})
	var gaps []int64
	for i := 1; i < len(starts); i++ {
		gaps = append(gaps, starts[i]-starts[i-1])
	}
	sorted := append([]int64(nil), gaps...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	median := time.Duration(sorted[len(sorted)/2]) * time.Millisecond
	t.Logf("gaps between checks (ms): %v", gaps)
	if median > interval*3/2 {
		t.Fatalf("median gap between stalled checks %v, want about the interval %v (gaps %v ms)", median, interval, gaps)
	}
}
