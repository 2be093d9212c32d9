package redisleak

import (
	"context"
	"net"
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
