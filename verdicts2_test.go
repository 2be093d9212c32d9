package redisleak_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

// ActionClose closes the socket but cannot give the slot back: the counters
// say exactly that, and LeaksFreed counts the slot once go-redis discards
// the connection.
func TestActionCloseSaysWhatHappened(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{Action: redisleak.ActionClose}, func(o *redis.Options) { o.PoolSize = 1; o.PoolTimeout = 200 * time.Millisecond })
	c := leakyConn(bg, rdb)
	defer c.Close()
	l := onlyLeak(t, scanUntil(t, tr, 1))
	if !l.Closed {
		t.Fatalf("not closed: %s", l)
	}
	if s := tr.Stats(); s.LeaksClosed != 1 || s.LeaksFreed != 0 {
		t.Fatalf("after closing: %+v", s)
	}
	// The slot is still taken: go-redis keeps it for the holder.
	if err := rdb.Get(bg, "k").Err(); !errors.Is(err, redis.ErrPoolTimeout) {
		t.Fatalf("GET with the leaked slot closed: %v, want a pool timeout", err)
	}
	// The holder's next call fails; go-redis discards the connection when
	// the holder lets it go.
	if err := c.Ping(bg).Err(); err == nil {
		t.Fatal("holder's next call succeeded on a closed connection")
	}
	_ = c.Close()
	redistest.WaitFor(t, 2*time.Second, "LeaksFreed", func() bool { return tr.Stats().LeaksFreed == 1 })
	if err := rdb.Get(bg, "k").Err(); err != nil && err != redis.Nil {
		t.Fatal(err)
	}
}

type afterRecorder struct {
	benchNoopRecorder
	waits atomic.Int64
}

func (r *afterRecorder) RecordConnectionWaitTime(context.Context, time.Duration, redis.ConnInfo) {
	r.waits.Add(1)
}

// A recorder installed after Instrument is never removed by Close.
func TestCloseKeepsARecorderItDidNotInstall(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	defer rdb.Close()
	tr, err := redisleak.Instrument(rdb, redisleak.Options{ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	rec := &afterRecorder{}
	redis.SetOTelRecorder(rec) // e.g. go-redis's native OTel metrics, after Instrument
	defer redis.SetOTelRecorder(nil)
	_ = tr.Close()
	before := rec.waits.Load()
	for i := 0; i < 5; i++ {
		rdb.Get(bg, "k")
	}
	if rec.waits.Load() == before {
		t.Fatal("Close removed a recorder it did not install")
	}
}

// A panicking OnLeak on the background scan is logged, not fatal; a
// blocking one does not hold up Close.
func TestOnLeakPanicsAndBlocks(t *testing.T) {
	t.Run("panic", func(t *testing.T) {
		logs := &logBuffer{}
		rdb, tr, _ := setup(t, redisleak.Options{ScanInterval: 20 * time.Millisecond, Logger: logs.logger(),
			OnLeak: func(redisleak.Leak) { panic("boom") }})
		c := leakyConn(bg, rdb)
		defer c.Close()
		redistest.WaitFor(t, 5*time.Second, "the panic to be logged", func() bool { return strings.Contains(logs.String(), "OnLeak panicked") })
		if tr.Stats().LeaksReported != 1 {
			t.Fatal(tr.Stats())
		}
	})
	t.Run("blocks", func(t *testing.T) {
		release := make(chan struct{})
		called := make(chan struct{}, 1)
		rdb, tr, _ := setup(t, redisleak.Options{ScanInterval: 20 * time.Millisecond,
			OnLeak: func(redisleak.Leak) {
				select {
				case called <- struct{}{}:
				default:
				}
				<-release
			}})
		defer close(release)
		c := leakyConn(bg, rdb)
		defer c.Close()
		select {
		case <-called:
		case <-time.After(5 * time.Second):
			t.Fatal("OnLeak not called")
		}
		// Scans go on while OnLeak blocks.
		c2 := leakyConn(bg, rdb)
		defer c2.Close()
		redistest.WaitFor(t, 5*time.Second, "the second leak", func() bool { return tr.Stats().LeaksReported == 2 })
		start := time.Now()
		_ = tr.Close()
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("Close took %v with OnLeak blocked", d)
		}
	})
}

// The pool-timeout text describes the pool that timed out, as of the
// timeout, on a cluster where other nodes' pools are held too.
func TestPoolTimeoutNamesItsOwnPool(t *testing.T) {
	cl := redistest.NewCluster(t, 3)
	rdb := cl.Client(t, func(o *redis.ClusterOptions) { o.PoolSize = 1; o.PoolTimeout = 150 * time.Millisecond })
	tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: time.Hour, ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	// Find two keys on different nodes.
	var keyA, keyB string
	var nodeA, nodeB *redis.Client
	for i := 0; nodeB == nil && i < 1000; i++ {
		k := "k" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
		n, err := rdb.MasterForKey(bg, k)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case nodeA == nil:
			keyA, nodeA = k, n
		case n != nodeA:
			keyB, nodeB = k, n
		}
	}
	_ = keyB
	hb := leakyConn(bg, nodeB) // held first, so the longest overall
	defer hb.Close()
	time.Sleep(50 * time.Millisecond)
	ha := leakyEphemeral(bg, nodeA)
	defer ha.Close()
	err = rdb.Get(bg, keyA).Err()
	var pe *redisleak.PoolTimeoutError
	if !errors.As(err, &pe) {
		t.Fatalf("GET: %v, want a PoolTimeoutError", err)
	}
	if len(pe.Held) != 1 || pe.Held[0].Count != 1 || len(pe.Longest) != 1 || !strings.Contains(pe.Longest[0].Site, "leakyEphemeral") {
		t.Fatalf("the error describes other pools: %v", err)
	}
	if !strings.Contains(err.Error(), ": 1 connection held:") {
		t.Fatalf("text: %v", err)
	}
}

// The WARN's maxHoldTimeMs is the maximum over the leaks it reports; the
// String of an exempt hold says it is long-lived and why.
func TestReportsReadRight(t *testing.T) {
	rdb, tr, logs := setup(t, redisleak.Options{})
	old := leakyConn(bg, rdb)
	defer old.Close()
	onlyLeak(t, scanUntil(t, tr, 1))
	time.Sleep(600 * time.Millisecond)
	young := leakyConn(bg, rdb)
	defer young.Close()
	scanUntil(t, tr, 2)
	lines := strings.Split(logs.String(), "\n")
	var last string
	for _, l := range lines {
		if strings.Contains(l, "leak detected") {
			last = l
		}
	}
	i := strings.Index(last, "maxHoldTimeMs=")
	if i < 0 {
		t.Fatalf("no maxHoldTimeMs: %s", last)
	}
	var v float64
	if _, err := fmtSscan(last[i+len("maxHoldTimeMs="):], &v); err != nil || v > 500 {
		t.Fatalf("maxHoldTimeMs %v covers an older leak: %s", v, last)
	}
	ps := rdb.Subscribe(bg, "news")
	defer ps.Close()
	if _, err := ps.Receive(bg); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	for _, h := range tr.Holds() {
		if h.Kind == redisleak.KindPubSub {
			if !strings.Contains(h.String(), "long-lived: a PubSub connection") || h.LongLivedBy != redisleak.LongLivedPubSub {
				t.Fatalf("exempt hold reads: %s", h)
			}
			return
		}
	}
	t.Fatal("no pubsub hold")
}

func fmtSscan(s string, v *float64) (int, error) {
	if i := strings.IndexByte(s, ' '); i >= 0 {
		s = s[:i]
	}
	return fmtSscanf(s, v)
}

var fmtSscanf = func(s string, v *float64) (int, error) { return fmt.Sscan(s, v) }
