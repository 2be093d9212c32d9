package bullmq_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	bullmq "github.com/redisleak/redisleak/bullmq_compat"
)

// A queue and a worker on an embedded miniredis; against a real Redis the
// same code interoperates with Node's BullMQ.
func Example() {
	m := miniredis.NewMiniRedis()
	if err := m.Start(); err != nil {
		panic(err)
	}
	defer m.Close()
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	defer rdb.Close()
	ctx := context.Background()

	q, err := bullmq.NewQueue(rdb, "emails", bullmq.QueueOptions{})
	if err != nil {
		panic(err)
	}
	job, err := q.Add(ctx, "welcome", map[string]string{"to": "ada@example.com"}, bullmq.JobOptions{Attempts: 3})
	if err != nil {
		panic(err)
	}
	fmt.Println("added job", job.ID)

	seen := make(chan string, 1)
	w, err := bullmq.NewWorker(rdb, "emails", func(ctx context.Context, j *bullmq.Job) (any, error) {
		seen <- j.Name + " " + string(j.Data)
		return map[string]bool{"sent": true}, nil
	}, bullmq.WorkerOptions{Concurrency: 4})
	if err != nil {
		panic(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	fmt.Println("processing", <-seen)

	closeCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := w.Close(closeCtx); err != nil { // waits for the running job
		panic(err)
	}
	fmt.Println("run returned", <-done)
	finished, err := q.GetJob(ctx, job.ID)
	if err != nil {
		panic(err)
	}
	fmt.Println("returnvalue", string(finished.ReturnValue))
	// Output:
	// added job 1
	// processing welcome {"to":"ada@example.com"}
	// run returned <nil>
	// returnvalue {"sent":true}
}

// Delayed and prioritized jobs, and a bad one that writes nothing.
func ExampleQueue_Add() {
	m := miniredis.NewMiniRedis()
	if err := m.Start(); err != nil {
		panic(err)
	}
	defer m.Close()
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	defer rdb.Close()
	ctx := context.Background()

	q, _ := bullmq.NewQueue(rdb, "reports", bullmq.QueueOptions{MaxQueueDepth: 3})
	_, _ = q.Add(ctx, "nightly", nil, bullmq.JobOptions{Delay: time.Hour})
	_, _ = q.Add(ctx, "urgent", nil, bullmq.JobOptions{Priority: 1})
	_, err := q.Add(ctx, "bad", nil, bullmq.JobOptions{JobID: "42"})
	fmt.Println(err)
	_, _ = q.Add(ctx, "plain", nil, bullmq.JobOptions{JobID: "report-7"})
	_, err = q.Add(ctx, "one too many", nil, bullmq.JobOptions{})
	fmt.Println(err)
	c, _ := q.Counts(ctx)
	fmt.Printf("waiting %d, prioritized %d, delayed %d\n", c.Waiting, c.Prioritized, c.Delayed)
	// Output:
	// bullmq: invalid job id "42": integer-like ids are reserved for generated ids
	// bullmq: queue full: reports has MaxQueueDepth 3
	// waiting 1, prioritized 1, delayed 1
}

// Retention policies for finished jobs, as Node stores them in a job's opts.
func ExampleKeepJobs() {
	for _, k := range []*bullmq.KeepJobs{bullmq.RemoveJob(), bullmq.KeepAll(), bullmq.KeepLast(100), bullmq.KeepFor(24 * time.Hour)} {
		b, _ := k.MarshalJSON()
		fmt.Println(string(b))
	}
	// Output:
	// true
	// false
	// 100
	// {"age":86400}
}

// Following a queue's events, written by Go or Node producers and workers.
func ExampleNewQueueEvents() {
	m := miniredis.NewMiniRedis()
	if err := m.Start(); err != nil {
		panic(err)
	}
	defer m.Close()
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	qe, err := bullmq.NewQueueEvents(ctx, rdb, "emails", bullmq.QueueEventsOptions{})
	if err != nil {
		panic(err)
	}
	defer qe.Close()
	q, _ := bullmq.NewQueue(rdb, "emails", bullmq.QueueOptions{})
	_, _ = q.Add(ctx, "welcome", nil, bullmq.JobOptions{Delay: time.Minute})
	for i := 0; i < 2; i++ {
		ev, err := qe.Next(ctx)
		if err != nil {
			panic(err)
		}
		fmt.Println(ev.Name, ev.JobID)
	}
	// Output:
	// added 1
	// delayed 1
}

// A custom backoff type, computed by the worker's BackoffStrategy like
// Node's settings.backoffStrategy (Node workers on the same queue need a
// strategy for the same type).
func ExampleWorkerOptions_backoffStrategy() {
	m := miniredis.NewMiniRedis()
	if err := m.Start(); err != nil {
		panic(err)
	}
	defer m.Close()
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	defer rdb.Close()
	ctx := context.Background()

	q, _ := bullmq.NewQueue(rdb, "reports", bullmq.QueueOptions{})
	if _, err := q.Add(ctx, "build", nil, bullmq.JobOptions{Attempts: 3, Backoff: bullmq.Backoff{Type: "linear", Delay: 10 * time.Millisecond}}); err != nil {
		panic(err)
	}
	done := make(chan struct{})
	w, _ := bullmq.NewWorker(rdb, "reports", func(ctx context.Context, j *bullmq.Job) (any, error) {
		if j.AttemptsMade < 2 {
			return nil, fmt.Errorf("attempt %d failed", j.AttemptsMade+1)
		}
		close(done)
		return "ok", nil
	}, bullmq.WorkerOptions{
		BackoffStrategy: func(attemptsMade int, typ string, err error, job *bullmq.Job) time.Duration {
			fmt.Printf("%s backoff after %d attempt(s): %v\n", typ, attemptsMade, err)
			if typ != "linear" {
				return -1 // fail for good
			}
			return time.Duration(attemptsMade) * 10 * time.Millisecond
		},
	})
	go w.Run(ctx)
	<-done
	closeCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_ = w.Close(closeCtx)
	// Output:
	// linear backoff after 1 attempt(s): attempt 1 failed
	// linear backoff after 2 attempt(s): attempt 2 failed
}

// The stored stack trace of a failed job has Node's shape; WithStack puts
// the frames where the error was made into it.
func ExampleWithStack() {
	m := miniredis.NewMiniRedis()
	if err := m.Start(); err != nil {
		panic(err)
	}
	defer m.Close()
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	defer rdb.Close()
	ctx := context.Background()

	q, _ := bullmq.NewQueue(rdb, "imports", bullmq.QueueOptions{})
	job, _ := q.Add(ctx, "csv", nil, bullmq.JobOptions{})
	done := make(chan struct{})
	w, _ := bullmq.NewWorker(rdb, "imports", func(ctx context.Context, j *bullmq.Job) (any, error) {
		defer close(done)
		return nil, bullmq.WithStack(fmt.Errorf("row %d: bad date", 7))
	}, bullmq.WorkerOptions{})
	go w.Run(ctx)
	<-done
	closeCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_ = w.Close(closeCtx)
	failed, _ := q.GetJob(ctx, job.ID)
	lines := strings.Split(failed.Stacktrace[0], "\n")
	fmt.Println(lines[0])
	fmt.Println(strings.HasPrefix(lines[1], "    at github.com/redisleak/redisleak/bullmq_compat_test.ExampleWithStack.func1 ("))
	// Output:
	// Error: row 7: bad date
	// true
}

// A handler that fans out: it adds children to its own job, waits for
// them in waiting-children, and runs again once they completed (Node's
// moveToWaitingChildren pattern).
func ExampleJob_MoveToWaitingChildren() {
	m := miniredis.NewMiniRedis()
	if err := m.Start(); err != nil {
		panic(err)
	}
	defer m.Close()
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	defer rdb.Close()
	ctx := context.Background()

	reports, _ := bullmq.NewQueue(rdb, "reports", bullmq.QueueOptions{})
	parts, _ := bullmq.NewQueue(rdb, "parts", bullmq.QueueOptions{})
	if _, err := reports.Add(ctx, "monthly", nil, bullmq.JobOptions{}); err != nil {
		panic(err)
	}
	done, waiting := make(chan struct{}), make(chan struct{})
	parent, _ := bullmq.NewWorker(rdb, "reports", func(ctx context.Context, j *bullmq.Job) (any, error) {
		if j.AttemptsStarted == 1 {
			for _, p := range []string{"sales", "costs"} {
				if _, err := parts.Add(ctx, p, nil, bullmq.JobOptions{Parent: &bullmq.ParentRef{ID: j.ID, Queue: reports.Qualified()}}); err != nil {
					return nil, err
				}
			}
			// (with children still to run, moved is true; had they all
			// finished already, the parent would simply go on)
			moved, err := j.MoveToWaitingChildren(ctx)
			if err != nil || moved {
				fmt.Println("waiting for children:", moved)
				close(waiting)
				return nil, bullmq.ErrWaitingChildren
			}
		}
		vals, err := j.ChildrenValues(ctx)
		fmt.Println("children done:", len(vals))
		close(done)
		return len(vals), err
	}, bullmq.WorkerOptions{})
	child, _ := bullmq.NewWorker(rdb, "parts", func(ctx context.Context, j *bullmq.Job) (any, error) {
		return j.Name + " ok", nil
	}, bullmq.WorkerOptions{})
	go parent.Run(ctx)
	<-waiting // (the children's worker starts once the parent waits: the output is always the same)
	go child.Run(ctx)
	<-done
	closeCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_ = parent.Close(closeCtx)
	_ = child.Close(closeCtx)
	// Output:
	// waiting for children: true
	// children done: 2
}
