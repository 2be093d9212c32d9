package bullmq

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

// TestIdleWorkerIsLongLivedForTheTracker: with the tracker attached, an
// idle worker blocked on its marker produces no leaks and counts as
// long-lived; a connection its handler holds too long is still reported.
func TestIdleWorkerIsLongLivedForTheTracker(t *testing.T) {
	rdb, name := realClient(t)
	tr, err := redisleak.Instrument(rdb, redisleak.Options{
		MaxHold: 300 * time.Millisecond, ScanInterval: time.Hour, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	release := make(chan struct{})
	holding := make(chan struct{})
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		// A handler that keeps a connection: its context has no
		// long-lived mark, so this hold must be reported.
		c := rdb.Conn()
		defer c.Close()
		if err := c.Ping(ctx).Err(); err != nil {
			return nil, err
		}
		close(holding)
		<-release
		return nil, nil
	}, WorkerOptions{DrainDelay: 5 * time.Second})
	startWorker(t, w)
	redistest.WaitFor(t, 5*time.Second, "the worker blocking on its marker", func() bool {
		return strings.Contains(rdb.ClientList(context.Background()).Val(), "cmd=bzpopmin")
	})
	time.Sleep(450 * time.Millisecond) // longer than MaxHold, while the worker idles
	if leaks := tr.Scan(); len(leaks) != 0 {
		t.Fatalf("idle worker reported as leaking: %v", leaks)
	}
	if s := tr.Stats(); s.LongLived < 1 {
		t.Fatalf("Stats = %+v, want LongLived >= 1", s)
	}

	q, _ := NewQueue(rdb, name, QueueOptions{})
	if _, err := q.Add(context.Background(), "leaky", nil, JobOptions{}); err != nil {
		t.Fatal(err)
	}
	<-holding
	time.Sleep(450 * time.Millisecond) // the handler's hold outlives MaxHold
	leaks := tr.Scan()
	close(release)
	if len(leaks) != 1 {
		t.Fatalf("want the handler's hold reported once, got %d leaks: %v", len(leaks), leaks)
	}
	if s := leaks[0].String(); strings.Contains(s, "bullmq:worker") {
		t.Fatalf("the handler's leak is attributed to the worker: %s", s)
	}
}
