package redisleak_test

// Tests of the tracker's verdicts under ordinary production conditions:
// shared contexts, late attachment, sticky holds used only through
// handshake-like commands and pipelines.

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

// Plain GETs from many goroutines sharing context.Background() are commands:
// none may be counted as a Conn hold (the context cannot tell the holders
// apart; go-redis reports a command after returning its connection).
func TestSharedContextGetsStayCommands(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{}, func(o *redis.Options) { o.PoolSize = 2 })
	const workers, per = 8, 2500
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				if err := rdb.Get(context.Background(), "k").Err(); err != nil && err != redis.Nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	var s redisleak.Stats
	redistest.WaitFor(t, 5*time.Second, "all holds counted", func() bool {
		s = tr.Stats()
		return s.HoldTime[redisleak.KindCommand].Count+s.HoldTime[redisleak.KindConn].Count >= workers*per
	})
	if n := s.HoldTime[redisleak.KindConn].Count; n != 0 {
		t.Fatalf("%d of %d plain GETs counted as kind conn", n, workers*per)
	}
}

func sleepOnServer(ctx context.Context, rdb *redis.Client, secs string) error {
	return rdb.Do(ctx, "debug", "sleep", secs).Err()
}

// A slow command on a shared context, with another goroutine looping GETs on
// the same context and pool, is reported as a command at its own site.
func TestSharedContextSlowCommandSite(t *testing.T) {
	srv := redistest.Private(t, redistest.PrivateOptions{Args: []string{"--enable-debug-command", "yes"}})
	rdb := srv.Client(func(o *redis.Options) { o.PoolSize = 1; o.ReadTimeout = -1; o.PoolTimeout = 5 * time.Second })
	tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 100 * time.Millisecond, ScanInterval: time.Hour, Logger: (&logBuffer{}).logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = rdb.Get(ctx, "k").Err()
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	wrong := 0
	const trials = 8
	for i := 0; i < trials; i++ {
		done := make(chan error, 1)
		go func() { done <- sleepOnServer(ctx, rdb, "0.4") }()
		var leak redisleak.Leak
		found := false
		deadline := time.Now().Add(3 * time.Second)
		for !found && time.Now().Before(deadline) {
			for _, l := range tr.Scan() {
				if l.HeldFor > 150*time.Millisecond {
					leak, found = l, true
				}
			}
			if !found {
				time.Sleep(20 * time.Millisecond)
			}
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if !found {
			t.Fatalf("trial %d: the slow command was not reported", i)
		}
		if leak.Kind != redisleak.KindCommand || !strings.Contains(leak.Site, "sleepOnServer") {
			wrong++
			t.Logf("trial %d: %s", i, leak)
		}
	}
	if wrong > 0 {
		t.Fatalf("%d of %d slow commands reported with a wrong kind or site", wrong, trials)
	}
}

func leakyEphemeral(ctx context.Context, rdb *redis.Client) *redis.Conn {
	c := rdb.EphemeralConn()
	c.ClientSetName(ctx, "worker-1") // first use: only a CLIENT command
	c.Select(ctx, 0)
	return c
}

func leakyPipelineConn(ctx context.Context, rdb *redis.Client) *redis.Conn {
	c := rdb.Conn()
	_, _ = c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Ping(ctx)
		p.Get(ctx, "k")
		return nil
	})
	return c
}

func leakyTxConn(ctx context.Context, rdb *redis.Client) *redis.Conn {
	c := rdb.Conn()
	_, _ = c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Incr(ctx, "n")
		return nil
	})
	return c
}

// A hold that outlives its command is kind conn with the site of its first
// use, whatever its commands were: CLIENT/SELECT only, a pipeline, a
// transaction. With long command and pipeline thresholds it is still
// reported (at the conn threshold).
func TestStickyHoldsOfEveryShape(t *testing.T) {
	for _, tc := range []struct {
		name, site string
		leak       func(context.Context, *redis.Client) *redis.Conn
	}{
		{"ephemeral-client-select", "leakyEphemeral", leakyEphemeral},
		{"pipeline", "leakyPipelineConn", leakyPipelineConn},
		{"tx", "leakyTxConn", leakyTxConn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb, tr, _ := setup(t, redisleak.Options{KindMaxHold: map[redisleak.Kind]time.Duration{
				redisleak.KindCommand: time.Hour, redisleak.KindPipeline: time.Hour, redisleak.KindTx: time.Hour,
			}})
			c := tc.leak(context.Background(), rdb)
			defer c.Close()
			l := onlyLeak(t, scanUntil(t, tr, 1))
			if l.Kind != redisleak.KindConn {
				t.Fatalf("kind %q, want conn: %s", l.Kind, l)
			}
			assertSite(t, l, tc.site)
		})
	}
}

// After a Ping and then Instrument, a Conn that takes the Ping's connection
// and is never closed is found, every time.
func TestLateAttachmentConnAfterPing(t *testing.T) {
	srv := redistest.Private(t)
	missed := 0
	const runs = 20
	for i := 0; i < runs; i++ {
		rdb := srv.Client()
		if err := rdb.Ping(bg).Err(); err != nil {
			t.Fatal(err)
		}
		tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 50 * time.Millisecond, ScanInterval: time.Hour, Logger: (&logBuffer{}).logger()})
		if err != nil {
			t.Fatal(err)
		}
		c := leakyConn(bg, rdb)
		found := false
		for deadline := time.Now().Add(time.Second); !found && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			found = len(tr.Scan()) == 1
		}
		if !found {
			missed++
		}
		_ = c.Close()
		_ = tr.Close()
		_ = rdb.Close()
	}
	if missed > 0 {
		t.Fatalf("missed %d of %d Conns taken right after Instrument", missed, runs)
	}
}

// A long-lived BZPOPMIN on an EphemeralConn right after Instrument (how a
// queue worker holds its connection) is in use and long-lived.
func TestLateAttachmentBlockingEphemeral(t *testing.T) {
	srv := redistest.Private(t)
	for i := 0; i < 10; i++ {
		rdb := srv.Client()
		if err := rdb.Ping(bg).Err(); err != nil {
			t.Fatal(err)
		}
		tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 50 * time.Millisecond, ScanInterval: time.Hour, Logger: (&logBuffer{}).logger()})
		if err != nil {
			t.Fatal(err)
		}
		c := rdb.EphemeralConn()
		done := make(chan struct{})
		go func() { defer close(done); c.BZPopMin(bg, 0, "redisleak:test:marker") }()
		redistest.WaitFor(t, 3*time.Second, "the blocking hold to be seen", func() bool {
			s := tr.Stats()
			return s.InUse == 1 && s.LongLived == 1
		})
		time.Sleep(100 * time.Millisecond)
		if leaks := tr.Scan(); len(leaks) != 0 {
			t.Fatalf("run %d: blocking hold reported: %v", i, leaks)
		}
		rdb.ZAdd(bg, "redisleak:test:marker", redis.Z{Member: "x"}) // unblocks the BZPOPMIN
		<-done
		_ = c.Close()
		_ = tr.Close()
		_ = rdb.Close()
	}
}

// Idle connections that exist when Instrument is called are counted at once.
func TestLateAttachmentCountsIdle(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client(func(o *redis.Options) { o.PoolSize = 20 })
	defer rdb.Close()
	var conns []*redis.Conn
	for i := 0; i < 20; i++ {
		c := rdb.Conn()
		if err := c.Ping(bg).Err(); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		_ = c.Close()
	}
	if ps := rdb.PoolStats(); ps.IdleConns != 20 {
		t.Fatalf("setup: %d idle", ps.IdleConns)
	}
	tr, err := redisleak.Instrument(rdb, redisleak.Options{ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if s := tr.Stats(); s.Total != 20 || s.Idle != 20 || s.InUse != 0 {
		t.Fatalf("right after Instrument: %+v", s)
	}
	// They are identified as they are used, without being counted twice.
	for i := 0; i < 100; i++ {
		rdb.Get(bg, "k")
	}
	if s := tr.Stats(); s.Total != 20 || s.Idle != 20 {
		t.Fatalf("after use: %+v", s)
	}
}

// A full pool at Instrument (PoolSize 1 held by a Conn): the leak is found,
// and the tracker causes no pool timeout.
func TestLateAttachmentFullPool(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client(func(o *redis.Options) { o.PoolSize = 1; o.PoolTimeout = 2 * time.Second })
	defer rdb.Close()
	c := rdb.Conn()
	if err := c.Ping(bg).Err(); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 100 * time.Millisecond, ScanInterval: time.Hour, Logger: (&logBuffer{}).logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Instrument took %v on a full pool", d)
	}
	if s := tr.Stats(); s.Total != 1 || s.InUse != 1 {
		t.Fatalf("stats %+v", s)
	}
	l := onlyLeak(t, scanUntil(t, tr, 1))
	if !l.Leaked || l.Kind != redisleak.KindConn {
		t.Fatalf("leak %s", l)
	}
	time.Sleep(100 * time.Millisecond)
	if n := rdb.PoolStats().Timeouts; n != 0 {
		t.Fatalf("the tracker caused %d pool timeouts", n)
	}
	_ = c.Close()
	redistest.WaitFor(t, 2*time.Second, "the hold to end", func() bool { return len(tr.Scan()) == 0 && tr.Stats().InUse == 0 })
}
