package redisleak

import (
	"context"
	"sync"
	"testing"

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
