package redisleak

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
)

// More connections than the record cache has entries (1,024), each used
// by its own goroutine for commands that check out and return it, while
// 2,000 of them stay held: the cache's collisions and evictions never mix
// records up. Every held Conn is one conn hold; after Close, none is held.
func TestRecordCacheCollisions(t *testing.T) {
	if testing.Short() {
		t.Skip("2,500 connections")
	}
	srv := redistest.Private(t)
	rdb := srv.Client(func(o *redis.Options) { o.PoolSize = 2600; o.MaxIdleConns = 2600 })
	tr, err := Instrument(rdb, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx := context.Background()
	const held, busy = 2000, 500
	conns := make([]*redis.Conn, held)
	var wg sync.WaitGroup
	for i := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := rdb.Conn()
			for range 3 {
				if err := c.Ping(ctx).Err(); err != nil {
					t.Error(err)
					return
				}
			}
			conns[i] = c
		}()
	}
	for range busy {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 40 {
				if err := rdb.Get(ctx, "k").Err(); err != nil && err != redis.Nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	s := tr.Stats()
	kinds := map[Kind]int{}
	for _, h := range tr.Holds() {
		kinds[h.Kind]++
	}
	if s.InUse != held || kinds[KindConn] != held || len(kinds) != 1 {
		t.Fatalf("with %d Conns held: InUse %d, holds by kind %v", held, s.InUse, kinds)
	}
	if hs := s.HoldTime[KindCommand]; hs.Count < busy*40 {
		t.Errorf("%d command holds counted, want at least %d", hs.Count, busy*40)
	}
	for _, c := range conns {
		_ = c.Close()
	}
	if s := tr.Stats(); s.InUse != 0 || s.Total != s.Idle {
		t.Fatalf("after Close: %+v", s)
	}
}

// dispatcherSlowWant is what disp.slow counts when no callback is running
// one of its slow paths' conditions in between.
func dispatcherSlowWant() int64 {
	n := disp.anonLive.Load() + int64(disp.probing.Load())
	if !disp.saw.Load() {
		n++
	}
	return n
}

// The dispatcher's one-word slow flag counts every condition its callbacks'
// slow paths exist for, and falls back as they end: connections that
// existed before the tracker (identified as they are used, dropped as they
// close; here with a chained recorder in front), the probe, the mode
// check. So does the
// process hook's (connections without a wrapper, hooks mode).
func TestDispatcherSlowFlagBalances(t *testing.T) {
	check := func(when string) {
		t.Helper()
		if got, want := disp.slow.Load(), dispatcherSlowWant(); got != want {
			t.Fatalf("%s: slow %d, want %d (anonymous %d, probing %d, chained %v, saw %v)", when, got, want,
				disp.anonLive.Load(), disp.probing.Load(), disp.chain.Load() != nil, disp.saw.Load())
		}
	}
	check("at start")
	srv := redistest.Private(t)
	rdb := srv.Client(func(o *redis.Options) { o.PoolSize = 8 })
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 8 { // eight connections before the tracker
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := rdb.Conn()
			defer c.Close()
			if err := c.Ping(ctx).Err(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	tr, err := Instrument(rdb, Options{ChainRecorder: &chainNoop{}})
	if err != nil {
		t.Fatal(err)
	}
	if disp.anonLive.Load() == 0 || disp.chain.Load() == nil {
		t.Fatalf("anonymous %d, chained %v: the test sets up neither", disp.anonLive.Load(), disp.chain.Load() != nil)
	}
	check("late attachment, chained")
	checkHook := func(when string) {
		t.Helper()
		want := tr.legacyN.Load()
		if tr.hooksMode.Load() {
			want++
		}
		if got := tr.hookSlow.Load(); got != want || when == "late attachment" && got == 0 {
			t.Fatalf("%s: hookSlow %d, want %d", when, got, want)
		}
	}
	checkHook("late attachment")
	tr.setHooksMode(true)
	checkHook("hooks mode")
	tr.setHooksMode(true)
	tr.setHooksMode(false)
	checkHook("observer mode")
	for range 100 {
		if err := rdb.Get(ctx, "k").Err(); err != nil && err != redis.Nil {
			t.Fatal(err)
		}
	}
	tr.checkMode()
	check("after commands and a mode check")
	for range 3 {
		if err := rdb.Get(ctx, "k").Err(); err != nil && err != redis.Nil {
			t.Fatal(err)
		}
	}
	check("after the next checkout")
	checkHook("after the next checkout")
	_ = rdb.Close()
	_ = tr.Close()
	check("closed")
	if disp.anonLive.Load() != 0 || disp.chain.Load() != nil {
		t.Fatalf("closed: anonymous %d, chained %v", disp.anonLive.Load(), disp.chain.Load() != nil)
	}
}

// chainNoop is a chained recorder that records nothing.
type chainNoop struct{}

func (chainNoop) RecordOperationDuration(context.Context, time.Duration, redis.Cmder, int, error, redis.ConnInfo, int) {
}
func (chainNoop) RecordPipelineOperationDuration(context.Context, time.Duration, string, int, int, error, redis.ConnInfo, int) {
}
func (chainNoop) RecordConnectionCreateTime(context.Context, time.Duration, redis.ConnInfo) {}
func (chainNoop) RecordConnectionRelaxedTimeout(context.Context, int, redis.ConnInfo, string, string) {
}
func (chainNoop) RecordConnectionHandoff(context.Context, redis.ConnInfo, string)           {}
func (chainNoop) RecordError(context.Context, string, redis.ConnInfo, string, bool, int)    {}
func (chainNoop) RecordMaintenanceNotification(context.Context, redis.ConnInfo, string)     {}
func (chainNoop) RecordConnectionWaitTime(context.Context, time.Duration, redis.ConnInfo)   {}
func (chainNoop) RecordConnectionClosed(context.Context, redis.ConnInfo, string, error)     {}
func (chainNoop) RecordPubSubMessage(context.Context, redis.ConnInfo, string, string, bool) {}
func (chainNoop) RecordStreamLag(context.Context, time.Duration, redis.ConnInfo, string, string, string) {
}

// holdPathCI is a ConnInfo for TestHoldPathsAgree: only its address is used.
type holdPathCI struct{ _ [8]byte }

func (*holdPathCI) RemoteAddr() net.Addr { return nil }
func (*holdPathCI) PoolName() string     { return "p" }

// The observer's checkout and return callbacks have beginHold and endUsed
// written out in their common case: a hold begun and ended through them
// leaves the record, the hold-time histograms and the returned-leak note
// exactly as beginHold and endHold do.
func TestHoldPathsAgree(t *testing.T) {
	d := newDispatcher()
	d.saw.Store(true)
	d.slow.Store(0)
	pipelined := withMark(context.Background(), func(m *mark) { m.pipeline = true })
	tx := withMark(context.Background(), func(m *mark) { m.tx = true })
	ctxs := []context.Context{context.Background(), WithLongLived(context.Background()), pipelined, tx, nil}
	for i := range 200 {
		ctx := ctxs[i%len(ctxs)]
		mk := func() *connRecord {
			r := &connRecord{tr: &Tracker{returnedNotes: make(chan returnedNote, 1)}}
			r.state.Store(stIdle)
			if i%3 == 1 {
				r.sticky.Store(stickyConn) // left by the last hold
			}
			return r
		}
		direct, viaCallbacks := mk(), mk()
		cn := &holdPathCI{}
		viaCallbacks.cnKey.Store(connInfoKey(cn))
		d.cache[cacheSlot(connInfoKey(cn))].Store(viaCallbacks)

		direct.beginHold(ctx)
		d.RecordConnectionWaitTime(ctx, 0, cn)
		if viaCallbacks.state.Load() != stUsed {
			t.Fatalf("ctx %d: the checkout callback did not begin the hold", i)
		}
		wantG := uintptr(0)
		if ctx != nil {
			wantG = curG()
		}
		if direct.holderG.Load() != wantG || viaCallbacks.holderG.Load() != curG() {
			t.Fatalf("ctx %d: holder %x and %x, this goroutine %x", i, direct.holderG.Load(), viaCallbacks.holderG.Load(), curG())
		}
		for _, r := range []*connRecord{direct, viaCallbacks} {
			if r.mark.Load() != markFrom(ctx) || r.sticky.Load() != stickyNone || r.holdSeq.Load() != 1 || r.acquiredAt.Load() == 0 {
				t.Fatalf("ctx %d: record after checkout: mark %v sticky %d seq %d acquired %d", i, r.mark.Load(), r.sticky.Load(), r.holdSeq.Load(), r.acquiredAt.Load())
			}
			switch i % 4 {
			case 1:
				r.sticky.Store(stickyTx)
			case 2:
				r.blockDeadline.Store(nanotime() + int64(time.Second))
			case 3:
				r.reportedSeq.Store(r.holdSeq.Load()) // reported as a leak
			}
			if i%5 == 4 {
				r.acquiredAt.Store(nanotime() + int64(time.Second)) // a hold that began "after" its end
			}
		}
		direct.endHold()
		d.RecordConnectionCount(context.Background(), 1, cn, "idle", false)
		for _, r := range []*connRecord{direct, viaCallbacks} {
			if r.state.Load() != stIdle || r.blockDeadline.Load() != 0 {
				t.Fatalf("ctx %d: record after return: state %d blockDeadline %d", i, r.state.Load(), r.blockDeadline.Load())
			}
		}
		for k := range direct.tr.holds.kinds {
			a, b := &direct.tr.holds.kinds[k], &viaCallbacks.tr.holds.kinds[k]
			// the two holds' lengths differ by nanoseconds, not their kind;
			// one that "ended before it began" counts as 0
			if i%5 == 4 && a.buckets[0].Load()+b.buckets[0].Load() != 0 && a.buckets[0].Load()+b.buckets[0].Load() != 2 {
				t.Fatalf("ctx %d: kind %d: clamped holds in bucket 0: %d and %d", i, k, a.buckets[0].Load(), b.buckets[0].Load())
			}
			if (a.max.Load() != 0) != (b.max.Load() != 0) {
				t.Fatalf("ctx %d: kind %d max %d and %d", i, k, a.max.Load(), b.max.Load())
			}
			ca, cb := uint64(0), uint64(0)
			for j := range a.buckets {
				ca += a.buckets[j].Load()
				cb += b.buckets[j].Load()
			}
			if ca != cb {
				t.Fatalf("ctx %d: kind %d: %d holds and %d", i, k, ca, cb)
			}
		}
		if len(direct.tr.returnedNotes) != len(viaCallbacks.tr.returnedNotes) || (i%4 == 3) != (len(direct.tr.returnedNotes) == 1) {
			t.Fatalf("ctx %d: returned notes %d and %d", i, len(direct.tr.returnedNotes), len(viaCallbacks.tr.returnedNotes))
		}
		d.cache[cacheSlot(connInfoKey(cn))].Store(noRecord)
	}
}

// internPCs hands out one read-only copy per distinct stack, and stops
// storing new ones at maxInternedStacks (later ones get their own copy).
func TestInternPCs(t *testing.T) {
	tr := &Tracker{}
	a := []uintptr{1, 2, 3}
	s1 := tr.internPCs(a)
	a[0] = 9 // the caller's buffer is reused: the interned copy must not change
	s2 := tr.internPCs([]uintptr{1, 2, 3})
	if &s1[0] != &s2[0] || s1[0] != 1 || len(s1) != 3 {
		t.Fatalf("same stack: %v at %p and %v at %p", s1, &s1[0], s2, &s2[0])
	}
	if s3 := tr.internPCs(a); &s3[0] == &s1[0] || s3[0] != 9 {
		t.Fatalf("other stack %v shares %v", s3, s1)
	}
	if tr.internPCs(nil) != nil {
		t.Fatal("empty stack interned")
	}
	for i := range maxInternedStacks + 10 {
		tr.internPCs([]uintptr{uintptr(i), 100})
	}
	if n := len(tr.stacks); n != maxInternedStacks {
		t.Fatalf("%d stacks kept, bound %d", n, maxInternedStacks)
	}
	past := []uintptr{uintptr(maxInternedStacks + 5), 100}
	if p1, p2 := tr.internPCs(past), tr.internPCs(past); &p1[0] == &p2[0] || p1[0] != past[0] {
		t.Fatal("a stack past the bound is shared or wrong")
	}
}

// holdConnsHere takes n Client.Conn and runs a PING on each: n sticky
// holds acquired at one place.
func holdConnsHere(t *testing.T, rdb *redis.Client, n int) []*redis.Conn {
	conns := make([]*redis.Conn, n)
	for i := range conns {
		conns[i] = rdb.Conn()
		if err := conns[i].Ping(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
	}
	return conns
}

// Sticky holds taken at one place share one acquisition stack, and each
// still reports that place.
func TestStickyHoldsShareTheirStack(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	defer rdb.Close()
	tr, err := Instrument(rdb, Options{FullStacks: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	conns := holdConnsHere(t, rdb, 3)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var stacks []*uintptr
	tr.mu.Lock()
	for r := range tr.records {
		r.mu.Lock()
		if c := r.cold; c != nil && len(c.sitePCs) > 0 {
			stacks = append(stacks, &c.sitePCs[0])
		}
		r.mu.Unlock()
	}
	tr.mu.Unlock()
	if len(stacks) != 3 || stacks[0] != stacks[1] || stacks[1] != stacks[2] {
		t.Fatalf("acquisition stacks of 3 holds taken in one place: %v", stacks)
	}
	holds := tr.Holds()
	if len(holds) != 3 {
		t.Fatalf("%d holds, want 3", len(holds))
	}
	// (this package's own frames are skipped when a site is named: the
	// site is the test runner; the stack names the function)
	for _, h := range holds {
		if h.Site == "" || h.Site != holds[0].Site || !strings.Contains(strings.Join(h.Stack, "\n"), "holdConnsHere") {
			t.Fatalf("hold's site %q, stack %q: want the same site for all three, holdConnsHere on the stack", h.Site, h.Stack)
		}
	}
}
