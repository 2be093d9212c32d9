package bullmq

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
)

// The benchmarks of the performance section, Go against the Node
// peer on the same Redis (run: go test -run '^$' -bench . -benchtime 1x
// ./bullmq_compat/). Each reports jobs/s or adds/s; compare within one run.

const benchJobs = 10000

func benchClient(b *testing.B) *redis.Client {
	b.Helper()
	rdb := redis.NewClient(clientOptions(redistest.Addr(b)))
	b.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

func fillQueue(b *testing.B, rdb *redis.Client, name string, n int) {
	b.Helper()
	q, _ := NewQueue(rdb, name, QueueOptions{})
	batch := make([]BulkJob, 0, 500)
	for i := 0; i < n; i++ {
		batch = append(batch, BulkJob{Name: "noop", Data: map[string]int{"i": i}})
		if len(batch) == cap(batch) || i == n-1 {
			if _, err := q.AddBulk(context.Background(), batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
}

// BenchmarkWorker10kNoop: 10,000 no-op jobs at concurrency 8, timed from
// worker start to the 10,000th finished job.
func BenchmarkWorker10kNoop(b *testing.B) {
	rdb := benchClient(b)
	b.Run("go", func(b *testing.B) {
		var total time.Duration
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			name := uniqueQueue(b)
			fillQueue(b, rdb, name, benchJobs)
			w, _ := NewWorker(rdb, name, func(context.Context, *Job) (any, error) { return nil, nil }, WorkerOptions{Concurrency: 8})
			var n atomic.Int64
			all := make(chan struct{})
			w.onFinish = func() {
				if n.Add(1) == benchJobs {
					close(all)
				}
			}
			done := make(chan error, 1)
			b.StartTimer()
			start := time.Now()
			go func() { done <- w.Run(context.Background()) }()
			<-all
			total += time.Since(start)
			b.StopTimer()
			_ = w.Close(context.Background())
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(benchJobs*b.N)/total.Seconds(), "jobs/s")
	})
	b.Run("node", func(b *testing.B) {
		needNode(b)
		var total time.Duration
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			name := uniqueQueue(b)
			fillQueue(b, rdb, name, benchJobs)
			var out struct {
				NS    int64 `json:"ns"`
				Count int   `json:"count"`
			}
			runNode(b, 5*time.Minute, "benchWork", nodeParams(b, rdb, name, map[string]any{"count": benchJobs, "concurrency": 8}), &out)
			if out.Count != benchJobs {
				b.Fatalf("node finished %d jobs", out.Count)
			}
			total += time.Duration(out.NS)
		}
		b.ReportMetric(float64(benchJobs*b.N)/total.Seconds(), "jobs/s")
	})
}

// BenchmarkAddSequential: max(b.N, 10,000) sequential adds of a small
// job, one at a time.
func BenchmarkAddSequential(b *testing.B) {
	rdb := benchClient(b)
	b.Run("go", func(b *testing.B) {
		q, _ := NewQueue(rdb, uniqueQueue(b), QueueOptions{})
		ctx := context.Background()
		if _, err := q.Add(ctx, "warm", map[string]int{"i": -1}, JobOptions{}); err != nil {
			b.Fatal(err)
		}
		n := max(b.N, benchJobs)
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < n; i++ {
			if _, err := q.Add(ctx, "bench", map[string]int{"i": i}, JobOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n)/time.Since(start).Seconds(), "adds/s")
	})
	b.Run("node", func(b *testing.B) {
		needNode(b)
		n := max(b.N, benchJobs)
		var out struct {
			NS int64 `json:"ns"`
		}
		runNode(b, 5*time.Minute, "benchAdd", nodeParams(b, rdb, uniqueQueue(b), map[string]any{"count": n}), &out)
		b.ReportMetric(float64(n)/time.Duration(out.NS).Seconds(), "adds/s")
		b.ReportMetric(float64(out.NS)/float64(n), "node-ns/add")
	})
}
