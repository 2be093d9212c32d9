package redisleak_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

func leakyConn(ctx context.Context, rdb *redis.Client) *redis.Conn {
	c := rdb.Conn()
	c.Ping(ctx) // the first command takes the connection from the pool
	return c
}

func TestLeakUnclosedConn(t *testing.T) {
	rdb, tr, logs := setup(t, redisleak.Options{})
	c := leakyConn(WithOwnerCtx("billing"), rdb)
	leaks := scanUntil(t, tr, 1)
	l := onlyLeak(t, leaks)
	if l.Kind != redisleak.KindConn || l.Owner != "billing" || l.ConnID == 0 || l.HeldFor < 150*time.Millisecond {
		t.Fatalf("unexpected leak %+v", l)
	}
	assertSite(t, l, "leakyConn")
	if s := tr.Stats(); s.Leaked != 1 || s.InUse != 1 || s.Total != s.Idle+s.InUse {
		t.Fatalf("stats %+v", s)
	}
	if !strings.Contains(logs.String(), "leak detected") || !strings.Contains(logs.String(), "leakedCount=1") || !strings.Contains(logs.String(), "maxHoldTimeMs=") {
		t.Fatalf("no WARN: %s", logs)
	}
	// Reported once: a second scan returns it but does not report again.
	before := strings.Count(logs.String(), "leak detected")
	if got := tr.Scan(); len(got) != 1 {
		t.Fatalf("second scan: %v", got)
	}
	if n := strings.Count(logs.String(), "leak detected"); n != before {
		t.Fatalf("reported again: %d warnings", n)
	}
	// The leak clears when returned, with an INFO follow-up.
	_ = c.Close()
	if got := tr.Scan(); len(got) != 0 {
		t.Fatalf("after Close: %v", got)
	}
	redistest.WaitFor(t, 2*time.Second, "stats to clear", func() bool { s := tr.Stats(); return s.Leaked == 0 && s.InUse == 0 })
	if tr.Stats().LeaksReported != 1 {
		t.Fatalf("LeaksReported %d", tr.Stats().LeaksReported)
	}
}

func WithOwnerCtx(owner string) context.Context { return redisleak.WithOwner(bg, owner) }

func blockInWatch(ctx context.Context, rdb *redis.Client, release <-chan struct{}) error {
	return rdb.Watch(ctx, func(tx *redis.Tx) error {
		<-release
		return nil
	}, "watched")
}

func TestLeakBlockedWatch(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{})
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- blockInWatch(bg, rdb, release) }()
	l := onlyLeak(t, scanUntil(t, tr, 1))
	if l.Kind != redisleak.KindTx {
		t.Fatalf("kind %q, want tx: %s", l.Kind, l)
	}
	assertSite(t, l, "blockInWatch")
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, 2*time.Second, "watch hold to end", func() bool { return len(tr.Scan()) == 0 })
}

func stuckGet(ctx context.Context, rdb *redis.Client) error {
	return rdb.Get(ctx, "k").Err()
}

func TestLeakStuckCommand(t *testing.T) {
	srv := redistest.Private(t)
	proxy := redistest.NewProxy(t, srv.Addr)
	rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr, ReadTimeout: -1, MaxRetries: -1, MaintNotificationsConfig: redistest.NoMaintNotifications()})
	defer rdb.Close()
	logs := &logBuffer{}
	tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 150 * time.Millisecond, ScanInterval: time.Hour, Logger: logs.logger(), FullStacks: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := rdb.Ping(bg).Err(); err != nil {
		t.Fatal(err)
	}
	proxy.Stall(true)
	done := make(chan error, 1)
	go func() { done <- stuckGet(bg, rdb) }()
	l := onlyLeak(t, scanUntil(t, tr, 1))
	if l.Kind != redisleak.KindCommand {
		t.Fatalf("kind %q: %s", l.Kind, l)
	}
	assertSite(t, l, "stuckGet")
	if len(l.Stack) == 0 {
		t.Fatal("FullStacks: no stack")
	}
	proxy.Stall(false)
	if err := <-done; err != nil && err != redis.Nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, 2*time.Second, "stuck hold to end", func() bool { return len(tr.Scan()) == 0 })
	redistest.WaitFor(t, 2*time.Second, "INFO follow-up", func() bool { return strings.Contains(logs.String(), "was returned") })
}

func TestLongLivedExempt(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{})
	// A Conn marked long-lived.
	c := rdb.Conn()
	defer c.Close()
	if err := c.Ping(redisleak.WithOwner(redisleak.WithLongLived(bg), "worker")).Err(); err != nil {
		t.Fatal(err)
	}
	// A PubSub: long-lived by nature.
	ps := rdb.Subscribe(bg, "chan")
	defer ps.Close()
	if _, err := ps.Receive(bg); err != nil {
		t.Fatal(err)
	}
	// A blocking command with timeout 0 (forever) and one within its timeout.
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); rdb.BLPop(bg, 0, "q-forever") }()
	go func() { defer wg.Done(); rdb.BRPop(bg, 3*time.Second, "q-bounded") }()
	// A per-call threshold longer than the hold.
	c2 := rdb.Conn()
	defer c2.Close()
	c2.Ping(redisleak.WithMaxHold(bg, time.Hour))

	redistest.WaitFor(t, 3*time.Second, "holds to be seen", func() bool { return tr.Stats().InUse >= 5 })
	time.Sleep(300 * time.Millisecond) // longer than MaxHold
	if leaks := tr.Scan(); len(leaks) != 0 {
		t.Fatalf("long-lived holds reported as leaks: %v", leaks)
	}
	s := tr.Stats()
	if s.LongLived != 4 || s.Leaked != 0 || s.InUse != 5 {
		t.Fatalf("stats %+v", s)
	}
	kinds := map[redisleak.Kind]int{}
	for _, h := range tr.Holds() {
		kinds[h.Kind]++
	}
	if kinds[redisleak.KindPubSub] != 1 || kinds[redisleak.KindBlocking] != 2 || kinds[redisleak.KindConn] != 2 {
		t.Fatalf("kinds %v", kinds)
	}
	// Wake the blocked clients.
	rdb.RPush(bg, "q-forever", "x")
	rdb.RPush(bg, "q-bounded", "x")
	wg.Wait()
}

// A naive detector (the age rule alone, as the demo's naive mode applies it)
// can be built on Holds: long-lived holds are listed with their age and
// the rule that exempts them.
func TestHoldsListLongLivedForANaiveRule(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{})
	ps := rdb.Subscribe(bg, "chan")
	defer ps.Close()
	if _, err := ps.Receive(bg); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if got := tr.Scan(); len(got) != 0 {
		t.Fatalf("the tracker reported a subscriber: %v", got)
	}
	var naive []redisleak.Leak
	for _, h := range tr.Holds() {
		if h.HeldFor > 150*time.Millisecond {
			naive = append(naive, h)
		}
	}
	if len(naive) != 1 || naive[0].Kind != redisleak.KindPubSub || !naive[0].LongLived || naive[0].LongLivedBy != redisleak.LongLivedPubSub {
		t.Fatalf("holds %v", naive)
	}
	assertSite(t, naive[0], "TestHoldsListLongLivedForANaiveRule")
}

func TestBlockingBeyondTimeoutIsLeak(t *testing.T) {
	// A blocking command is exempt for its timeout plus the grace; here the
	// hold threshold is tiny and we check the exemption window is used.
	rdb, tr, _ := setup(t, redisleak.Options{})
	done := make(chan struct{})
	go func() { defer close(done); rdb.BLPop(bg, time.Second, "nothing") }()
	redistest.WaitFor(t, 2*time.Second, "blocking hold", func() bool { return tr.Stats().InUse == 1 })
	time.Sleep(300 * time.Millisecond)
	if got := tr.Scan(); len(got) != 0 {
		t.Fatalf("within timeout+grace: %v", got)
	}
	if s := tr.Stats(); s.LongLived != 1 {
		t.Fatalf("stats %+v", s)
	}
	<-done
}

func TestNoFalsePositivesUnderMixedLoad(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{MaxHold: 3 * time.Second, ScanInterval: 50 * time.Millisecond}, func(o *redis.Options) { o.PoolSize = 8 })
	var leaks atomic.Int64
	tr2 := tr
	_ = tr2
	ctx, cancel := context.WithTimeout(bg, 1500*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	ps := rdb.Subscribe(bg, "load")
	defer ps.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		ch := ps.Channel()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
			}
		}
	}()
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				switch i % 5 {
				case 0:
					rdb.Set(ctx, "k", i, 0)
				case 1:
					rdb.Pipelined(ctx, func(p redis.Pipeliner) error { p.Incr(ctx, "c"); p.Get(ctx, "k"); return nil })
				case 2:
					rdb.TxPipelined(ctx, func(p redis.Pipeliner) error { p.Incr(ctx, "c"); return nil })
				case 3:
					rdb.Watch(ctx, func(tx *redis.Tx) error { _, err := tx.Get(ctx, "k").Result(); _ = err; return nil }, "k")
				case 4:
					rdb.Publish(ctx, "load", "m")
				}
			}
		}(g)
	}
	for ctx.Err() == nil {
		leaks.Add(int64(len(tr.Scan())))
		time.Sleep(50 * time.Millisecond)
	}
	wg.Wait()
	if n := leaks.Load(); n != 0 {
		t.Fatalf("%d false leaks", n)
	}
	s := tr.Stats()
	if s.Total != s.Idle+s.InUse || s.LeaksReported != 0 {
		t.Fatalf("stats %+v", s)
	}
	ps.Close()
	redistest.WaitFor(t, 3*time.Second, "totals to agree with go-redis", func() bool {
		p := rdb.PoolStats()
		return tr.Stats().Total == int(p.TotalConns)+int(p.PipelineStats.TotalConns)+int(p.PubSubStats.Active)
	})
	for _, k := range []redisleak.Kind{redisleak.KindCommand, redisleak.KindPipeline, redisleak.KindTx} {
		redistest.WaitFor(t, time.Second, "hold stats for "+string(k), func() bool { return tr.Stats().HoldTime[k].Count > 0 })
	}
}

func TestRestartLeavesNoPhantomHolds(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client(func(o *redis.Options) { o.MaxRetries = 5; o.MinRetryBackoff = 10 * time.Millisecond })
	tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 150 * time.Millisecond, ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for i := 0; i < 20; i++ {
		rdb.Set(bg, "k", i, 0)
	}
	ps := rdb.Subscribe(bg, "c")
	defer ps.Close()
	if _, err := ps.Receive(bg); err != nil {
		t.Fatal(err)
	}
	msgs := ps.Channel() // its reader notices the restart and reconnects
	go func() {
		for range msgs {
		}
	}()
	c := leakyConn(bg, rdb)
	srv.Restart()
	// The leaked Conn's socket is dead: its next command fails and Close
	// discards it. Pooled connections are replaced as they fail.
	_ = c.Ping(bg).Err()
	_ = c.Close()
	redistest.WaitFor(t, 5*time.Second, "commands to work again", func() bool { return rdb.Set(bg, "k", 1, 0).Err() == nil })
	redistest.WaitFor(t, 5*time.Second, "pubsub to reconnect", func() bool { return rdb.Publish(bg, "c", "x").Val() == 1 })
	redistest.WaitFor(t, 3*time.Second, "no phantom holds", func() bool {
		s := tr.Stats()
		return s.InUse == 1 && s.LongLived == 1 && s.Leaked == 0 && s.Total == s.Idle+s.InUse
	})
	if got := tr.Scan(); len(got) != 0 {
		t.Fatalf("phantom leaks: %v", got)
	}
	// Closed connections are forgotten: the tracker's total is go-redis's
	// (main pool, pipeline pool and the PubSub connection).
	ps2 := rdb.PoolStats()
	redistest.WaitFor(t, 3*time.Second, "totals to agree", func() bool {
		return tr.Stats().Total == int(ps2.TotalConns)+int(ps2.PipelineStats.TotalConns)+int(ps2.PubSubStats.Active)
	})
}

func holdTwo(ctx context.Context, rdb *redis.Client) []*redis.Conn {
	a, b := rdb.Conn(), rdb.Conn()
	a.Ping(ctx)
	b.Ping(ctx)
	return []*redis.Conn{a, b}
}

func TestPoolTimeoutNamesHolders(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{}, func(o *redis.Options) {
		o.PoolSize = 2
		o.PoolTimeout = 100 * time.Millisecond
		o.PipelinePoolSize = -1 // pipelines share the main pool
	})
	held := holdTwo(redisleak.WithOwner(bg, "report-job"), rdb)
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	cmd := rdb.Get(bg, "k")
	err := cmd.Err()
	if !errors.Is(err, redis.ErrPoolTimeout) {
		t.Fatalf("err %v is not a pool timeout", err)
	}
	var pte *redisleak.PoolTimeoutError
	if !errors.As(err, &pte) {
		t.Fatalf("err %T is not enriched", err)
	}
	msg := err.Error()
	for _, want := range []string{"connection pool timeout", "2 conn", `"report-job"`, "holdTwo"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("message %q lacks %q", msg, want)
		}
	}
	// The same error through a pipeline.
	_, perr := rdb.Pipelined(bg, func(p redis.Pipeliner) error { p.Get(bg, "k"); return nil })
	if !errors.As(perr, &pte) || !errors.Is(perr, redis.ErrPoolTimeout) {
		t.Fatalf("pipeline err %v", perr)
	}
	if tr.Stats().PoolTimeouts < 2 {
		t.Fatalf("stats %+v", tr.Stats())
	}
}

func TestActionCloseLeaked(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{Action: redisleak.ActionClose})
	c := leakyConn(bg, rdb)
	defer c.Close()
	l := onlyLeak(t, scanUntil(t, tr, 1))
	if !l.Closed {
		t.Fatalf("not closed: %s", l)
	}
	if err := c.Ping(bg).Err(); err == nil {
		t.Fatal("holder's next call succeeded on a closed connection")
	}
	c.Close()
	redistest.WaitFor(t, 2*time.Second, "slot freed", func() bool { return tr.Stats().InUse == 0 })
	if err := rdb.Ping(bg).Err(); err != nil {
		t.Fatal(err)
	}
	if tr.Stats().LeaksClosed != 1 {
		t.Fatalf("stats %+v", tr.Stats())
	}
}

func TestActionCloseOnlyUnderPressure(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{Action: redisleak.ActionClose, CloseAbove: 0.5}, func(o *redis.Options) { o.PoolSize = 4 })
	c := leakyConn(bg, rdb) // 1 of 4 in use: 25%, below 50%
	defer c.Close()
	l := onlyLeak(t, scanUntil(t, tr, 1))
	if l.Closed {
		t.Fatal("closed below the pressure threshold")
	}
	if err := c.Ping(bg).Err(); err != nil {
		t.Fatal(err)
	}
	cs := holdTwo(bg, rdb) // 3 of 4: 75%
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	leaks := scanUntil(t, tr, 3)
	closed := 0
	for _, l := range leaks {
		if l.Closed {
			closed++
		}
	}
	if closed != 2 {
		t.Fatalf("want the 2 new leaks closed: %v", leaks)
	}
}

func TestLateAttachment(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	// Connections opened before the tracker.
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); rdb.Ping(bg) }()
	}
	wg.Wait()
	tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 150 * time.Millisecond, ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	redistest.WaitFor(t, 3*time.Second, "pre-existing connection tracked", func() bool { return tr.Stats().Total >= 1 })
	c := leakyConn(bg, rdb)
	defer c.Close()
	l := onlyLeak(t, scanUntil(t, tr, 1))
	assertSite(t, l, "leakyConn")
}

func TestBadInput(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	var nilClient *redis.Client
	cases := map[string]struct {
		c redis.UniversalClient
		o redisleak.Options
	}{
		"nil":              {nil, redisleak.Options{}},
		"typed nil":        {nilClient, redisleak.Options{}},
		"negative MaxHold": {rdb, redisleak.Options{MaxHold: -1}},
		"negative scan":    {rdb, redisleak.Options{ScanInterval: -time.Second}},
		"short grace":      {rdb, redisleak.Options{BlockingGrace: time.Second}},
		"bad action":       {rdb, redisleak.Options{Action: 7}},
		"CloseAbove alone": {rdb, redisleak.Options{CloseAbove: 0.5}},
		"CloseAbove >= 1":  {rdb, redisleak.Options{Action: redisleak.ActionClose, CloseAbove: 1}},
		"unknown kind":     {rdb, redisleak.Options{KindMaxHold: map[redisleak.Kind]time.Duration{"nope": time.Second}}},
		"negative kind":    {rdb, redisleak.Options{KindMaxHold: map[redisleak.Kind]time.Duration{"conn": -1}}},
		"stack too deep":   {rdb, redisleak.Options{StackDepth: 1000}},
		"unsupported type": {fakeUniversal{rdb}, redisleak.Options{}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			tr, err := redisleak.Instrument(c.c, c.o)
			if err == nil {
				tr.Close()
				t.Fatal("no error")
			}
			if !strings.HasPrefix(err.Error(), "redisleak:") {
				t.Fatalf("error without package prefix: %v", err)
			}
		})
	}
}

// fakeUniversal is a UniversalClient of a type Instrument does not know.
type fakeUniversal struct{ *redis.Client }

func TestCloseIsIdempotentAndInert(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{})
	c := leakyConn(bg, rdb)
	defer c.Close()
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if got := tr.Scan(); got != nil {
		t.Fatalf("Scan after Close: %v", got)
	}
	_ = tr.Stats()
	_ = tr.Holds()
	// The client keeps working with inert hooks.
	for i := 0; i < 10; i++ {
		if err := rdb.Set(bg, "k", i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	ps := rdb.Subscribe(bg, "x")
	defer ps.Close()
	if _, err := ps.Receive(bg); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentTrackersAndRecorderRestore(t *testing.T) {
	srv := redistest.Private(t)
	a, b := srv.Client(), srv.Client()
	ta, err := redisleak.Instrument(a, redisleak.Options{MaxHold: 150 * time.Millisecond, ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	tb, err := redisleak.Instrument(b, redisleak.Options{MaxHold: 150 * time.Millisecond, ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ca := leakyConn(bg, a)
	defer ca.Close()
	b.Ping(bg)
	if n := len(scanUntil(t, ta, 1)); n != 1 {
		t.Fatal(n)
	}
	if got := tb.Scan(); len(got) != 0 {
		t.Fatalf("tracker b sees a's leak: %v", got)
	}
	ta.Close()
	// b still works after a closed.
	cb := leakyConn(bg, b)
	defer cb.Close()
	if n := len(scanUntil(t, tb, 1)); n != 1 {
		t.Fatal(n)
	}
	tb.Close()
}

func TestReinstrumentAfterClose(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{})
	if tr2, err := redisleak.Instrument(rdb, redisleak.Options{}); err == nil {
		tr2.Close()
		t.Fatal("a second open tracker on one client was accepted")
	}
	rdb.Ping(bg)
	tr.Close()
	// A new tracker on the same client works although the closed one's
	// hooks (and connection wrappers) cannot be removed.
	tr2, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 150 * time.Millisecond, ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr2.Close()
	// The existing connection is wrapped by the closed tracker only: the
	// late-attachment probe names its pool, and it is tracked from then on.
	redistest.WaitFor(t, 3*time.Second, "existing connection tracked", func() bool { return tr2.Stats().Total == 1 })
	c := leakyConn(bg, rdb)
	defer c.Close()
	l := onlyLeak(t, scanUntil(t, tr2, 1))
	assertSite(t, l, "leakyConn")
}
