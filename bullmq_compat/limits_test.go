package bullmq

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestWorkerRateLimiter(t *testing.T) {
	rdb, name := realClient(t)
	ctx := ctxT(t, 30*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	var mu sync.Mutex
	var starts []time.Time
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		mu.Lock()
		starts = append(starts, time.Now())
		mu.Unlock()
		return nil, nil
	}, WorkerOptions{Concurrency: 4, Limiter: RateLimiter{Max: 2, Duration: 500 * time.Millisecond}})
	for i := 0; i < 6; i++ {
		if _, err := q.Add(ctx, "limited", i, JobOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	startWorker(t, w)
	waitEvents(t, rdb, q, 6, "completed")
	mu.Lock()
	defer mu.Unlock()
	// 2 jobs per 500ms window: the 6th starts at least two windows after
	// the 1st (1s; the margin absorbs goroutine scheduling on a busy host).
	if d := starts[5].Sub(starts[0]); d < 800*time.Millisecond {
		t.Fatalf("6 jobs in %v with a limit of 2 per 500ms", d)
	}
}

// maxConcurrent runs n jobs through a Go worker of concurrency 4 and
// returns the most that ran at once.
func maxConcurrent(t *testing.T, rdb *redis.Client, name string, n int) int32 {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	var now, peak atomic.Int32
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		c := now.Add(1)
		for {
			p := peak.Load()
			if c <= p || peak.CompareAndSwap(p, c) {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
		now.Add(-1)
		return nil, nil
	}, WorkerOptions{Concurrency: 4})
	for i := 0; i < n; i++ {
		if _, err := q.Add(ctx, "j", i, JobOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	startWorker(t, w)
	waitEvents(t, rdb, q, n, "completed")
	return peak.Load()
}

func TestNodeGlobalConcurrencyAndRateLimit(t *testing.T) {
	t.Run("concurrency", func(t *testing.T) {
		needNode(t)
		rdb, name := realClient(t)
		runNode(t, 30*time.Second, "meta", nodeParams(t, rdb, name, map[string]any{"globalConcurrency": 1}), nil)
		if p := maxConcurrent(t, rdb, name, 8); p != 1 {
			t.Fatalf("%d jobs ran at once under Node's global concurrency 1", p)
		}
	})
	t.Run("no limit", func(t *testing.T) {
		rdb, name := realClient(t)
		if p := maxConcurrent(t, rdb, name, 8); p < 2 {
			t.Fatalf("peak %d: the worker's own concurrency 4 is not used", p)
		}
	})
	t.Run("rate limit", func(t *testing.T) {
		needNode(t)
		rdb, name := realClient(t)
		ctx := ctxT(t, 30*time.Second)
		runNode(t, 30*time.Second, "meta", nodeParams(t, rdb, name, map[string]any{"rateMax": 1, "rateDuration": 500}), nil)
		q, _ := NewQueue(rdb, name, QueueOptions{})
		for i := 0; i < 3; i++ {
			if _, err := q.Add(ctx, "r", i, JobOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		var mu sync.Mutex
		var starts []time.Time
		w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
			mu.Lock()
			starts = append(starts, time.Now())
			mu.Unlock()
			return nil, nil
		}, WorkerOptions{Concurrency: 4})
		startWorker(t, w)
		waitEvents(t, rdb, q, 3, "completed")
		mu.Lock()
		defer mu.Unlock()
		// 1 job per 500ms: 1s between the 1st and the 3rd, less a margin
		// for goroutine scheduling on a busy host.
		if d := starts[2].Sub(starts[0]); d < 800*time.Millisecond {
			var pon []string
			for _, id := range []string{"1", "2", "3"} {
				pon = append(pon, rdb.HGet(ctx, q.Key(id), "processedOn").Val())
			}
			t.Fatalf("3 jobs in %v under Node's global limit of 1 per 500ms (meta %v, limiter ttl %v, processedOn %v)",
				d, rdb.HGetAll(ctx, q.Key("meta")).Val(), rdb.PTTL(ctx, q.Key("limiter")).Val(), pon)
		}
	})
}
