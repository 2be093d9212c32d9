package bullmq

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redisleak/redisleak/internal/redistest"
)

// TestNoFalseLockLostErrors: jobs that finish while a lock renewal is in
// flight are not reported as having lost their lock. On miniredis no lock
// ever expires (its clock only moves with FastForward), so every
// ErrLockMismatch would be false; 4 ms locks are renewed every 1 ms, so
// renewals overlap the finishes of short jobs all the time.
func TestNoFalseLockLostErrors(t *testing.T) {
	rdb, _ := miniClient(t)
	name := uniqueQueue(t)
	ctx := ctxT(t, 60*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	const n = 600
	jobs := make([]BulkJob, n)
	for i := range jobs {
		jobs[i] = BulkJob{Name: "short", Data: i}
	}
	if _, err := q.AddBulk(ctx, jobs); err != nil {
		t.Fatal(err)
	}
	var lost, other atomic.Int32
	var done atomic.Int32
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		time.Sleep(time.Duration(done.Add(1)%3) * time.Millisecond)
		return nil, nil
	}, WorkerOptions{Concurrency: 4, LockDuration: 4 * time.Millisecond, SkipStalledCheck: true,
		OnError: func(err error) {
			if errors.Is(err, ErrLockMismatch) {
				lost.Add(1)
			} else {
				other.Add(1)
				t.Errorf("worker error: %v", err)
			}
		}})
	startWorker(t, w)
	redistest.WaitFor(t, 50*time.Second, "all jobs completed", func() bool {
		c, err := q.Counts(ctx)
		return err == nil && c.Completed == n
	})
	if l := lost.Load(); l != 0 {
		t.Fatalf("%d false \"job lock lost\" errors for %d jobs that all completed normally", l, n)
	}
}

// TestLostLockIsReported: a running job whose lock disappears (another
// worker's stalled check took it) is still reported.
func TestLostLockIsReported(t *testing.T) {
	rdb, _ := miniClient(t)
	name := uniqueQueue(t)
	ctx := ctxT(t, 30*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	if _, err := q.Add(ctx, "long", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	lost := make(chan error, 16)
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		close(started)
		<-release
		return nil, nil
	}, WorkerOptions{LockDuration: 40 * time.Millisecond, SkipStalledCheck: true, OnError: func(err error) {
		if errors.Is(err, ErrLockMismatch) {
			select {
			case lost <- err:
			default:
			}
		}
	}})
	startWorker(t, w)
	defer close(release)
	<-started
	rdb.Del(ctx, q.Key("1:lock"))
	select {
	case err := <-lost:
		t.Logf("reported: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the lost lock of a running job was not reported")
	}
}
