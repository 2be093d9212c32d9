//go:build soak

package redisleak_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

// TestSoak reproduces the original fix's verification: minutes of mixed load
// with queue-, subscriber- and SSE-style long-lived holders at the default
// thresholds (30 s / 10 s): zero leak reports and stable stats.
//
//	go test -tags soak -race -run TestSoak -timeout 15m -v .
//
// REDISLEAK_SOAK sets the duration (default 5m); REDISLEAK_SOAK_AUTO=1 runs
// it with Options.AutoLongLived.
func TestSoak(t *testing.T) {
	dur := 5 * time.Minute
	if s := os.Getenv("REDISLEAK_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		dur = d
	}
	srv := redistest.Private(t)
	rdb := srv.Client(func(o *redis.Options) { o.PoolSize = 16 })
	var leaks atomic.Int64
	auto := os.Getenv("REDISLEAK_SOAK_AUTO") == "1"
	tr, err := redisleak.Instrument(rdb, redisleak.Options{AutoLongLived: auto, OnLeak: func(l redisleak.Leak) {
		leaks.Add(1)
		t.Errorf("leak: %s", l)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()

	ctx, cancel := context.WithTimeout(bg, dur)
	defer cancel()
	var wg sync.WaitGroup
	run := func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() }

	// Queue-style: a dedicated connection blocked on a marker (BZPOPMIN).
	for q := 0; q < 2; q++ {
		q := q
		run(func() {
			c := rdb.Conn()
			defer c.Close()
			lctx := redisleak.WithOwner(redisleak.WithLongLived(ctx), fmt.Sprint("queue", q))
			for ctx.Err() == nil {
				c.BZPopMin(lctx, 5*time.Second, fmt.Sprint("marker", q))
			}
		})
	}
	// Subscriber-style: PubSub for the whole run.
	ps := rdb.Subscribe(ctx, "events")
	defer ps.Close()
	run(func() {
		ch := ps.Channel()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
			}
		}
	})
	// SSE-style: a subscriber plus a history reader blocked in XREAD BLOCK.
	sse := rdb.Subscribe(redisleak.WithLongLived(ctx), "sse")
	defer sse.Close()
	run(func() {
		c := rdb.Conn()
		defer c.Close()
		lctx := redisleak.WithOwner(redisleak.WithLongLived(ctx), "sse")
		for ctx.Err() == nil {
			c.XRead(lctx, &redis.XReadArgs{Streams: []string{"hist", "$"}, Block: 3 * time.Second})
		}
	})
	// Mixed load.
	for g := 0; g < 6; g++ {
		run(func() {
			for i := 0; ctx.Err() == nil; i++ {
				switch i % 6 {
				case 0:
					rdb.Set(ctx, "k", i, 0)
				case 1:
					rdb.Pipelined(ctx, func(p redis.Pipeliner) error { p.Incr(ctx, "c"); p.Get(ctx, "k"); return nil })
				case 2:
					rdb.TxPipelined(ctx, func(p redis.Pipeliner) error { p.Incr(ctx, "c"); return nil })
				case 3:
					rdb.Publish(ctx, "events", i)
				case 4:
					rdb.XAdd(ctx, &redis.XAddArgs{Stream: "hist", MaxLen: 1000, Approx: true, Values: []any{"i", i}})
				case 5:
					rdb.ZAdd(ctx, "marker0", redis.Z{Score: 0, Member: i})
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	maxTotal := 0
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			s := tr.Stats()
			t.Logf("stats: total=%d idle=%d inUse=%d longLived=%d leaked=%d", s.Total, s.Idle, s.InUse, s.LongLived, s.Leaked)
			if s.Total != s.Idle+s.InUse || s.Leaked != 0 {
				t.Errorf("stats %+v", s)
			}
			if s.Total > maxTotal {
				maxTotal = s.Total
			}
		}
	}
	wg.Wait()
	if n := leaks.Load(); n != 0 {
		t.Fatalf("%d leak reports", n)
	}
	// Pool (16) + pipeline pool + 2 PubSub: bounded, no growth.
	if maxTotal > 16+10+2 {
		t.Fatalf("connections grew to %d", maxTotal)
	}
}
