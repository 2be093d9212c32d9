package bullmq

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
)

// TestWorkerSurvivesRedisRestart: after a restart the worker reconnects its
// blocking connection (named again) and processes new jobs.
func TestWorkerSurvivesRedisRestart(t *testing.T) {
	s := redistest.Private(t)
	rdb := redis.NewClient(clientOptions(s.Addr))
	t.Cleanup(func() { _ = rdb.Close() })
	name := uniqueQueue(t)
	ctx := ctxT(t, 30*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	var ran atomic.Int32
	var errs atomic.Int32
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		ran.Add(1)
		return nil, nil
	}, WorkerOptions{OnError: func(error) { errs.Add(1) }})
	startWorker(t, w)
	redistest.WaitFor(t, 5*time.Second, "the worker blocking", func() bool {
		return strings.Contains(rdb.ClientList(ctx).Val(), "name="+w.ClientName()+" ")
	})
	s.Restart()
	redistest.WaitFor(t, 15*time.Second, "the worker blocking again after the restart", func() bool {
		return strings.Contains(rdb.ClientList(ctx).Val(), "name="+w.ClientName()+" ")
	})
	if _, err := q.Add(ctx, "after", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, 15*time.Second, "the job added after the restart to run", func() bool { return ran.Load() == 1 })
	t.Logf("%d errors reported during the restart", errs.Load())
}

// TestQueueEventsSurvivesRedisRestart: Next reconnects and goes on from
// the last stream id.
func TestQueueEventsSurvivesRedisRestart(t *testing.T) {
	s := redistest.Private(t)
	rdb := redis.NewClient(clientOptions(s.Addr))
	t.Cleanup(func() { _ = rdb.Close() })
	name := uniqueQueue(t)
	ctx := ctxT(t, 30*time.Second)
	qe, err := NewQueueEvents(ctx, rdb, name, QueueEventsOptions{BlockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer qe.Close()
	s.Restart()
	q, _ := NewQueue(rdb, name, QueueOptions{})
	var j *Job
	redistest.WaitFor(t, 10*time.Second, "an add after the restart", func() bool {
		j, err = q.Add(ctx, "after", nil, JobOptions{})
		return err == nil
	})
	ev, err := qe.Next(ctx)
	if err != nil || ev.Name != "added" || ev.JobID != j.ID {
		t.Fatalf("Next = %+v, %v", ev, err)
	}
}

// TestQueueEventsReturnsRedisErrors: an error reply (here WRONGTYPE) is
// returned by Next at once; only network errors make it reconnect and
// retry (it used to reconnect on any error, until ctx ended).
func TestQueueEventsReturnsRedisErrors(t *testing.T) {
	rdb, name := realClient(t)
	ctx := ctxT(t, 20*time.Second)
	qe, err := NewQueueEvents(ctx, rdb, name, QueueEventsOptions{LastEventID: "0", BlockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer qe.Close()
	key := "bull:" + name + ":events"
	t.Cleanup(func() { rdb.Del(context.Background(), key) })
	if err := rdb.Set(ctx, key, "not a stream", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	_, err = qe.Next(ctx)
	var re redis.Error
	if !errors.As(err, &re) || !strings.HasPrefix(re.Error(), "WRONGTYPE") {
		t.Fatalf("Next = %v, want a WRONGTYPE reply", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("Next returned only when its context ended: %v", err)
	}
}
