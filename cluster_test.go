package redisleak_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

func TestClusterClient(t *testing.T) {
	cl := redistest.NewCluster(t, 3)
	rdb := cl.Client(t)
	// Use it before instrumenting: existing nodes are reached too.
	if err := rdb.Set(bg, "before", 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 150 * time.Millisecond, ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.Stats().ClientKind != redisleak.ClientKindCluster {
		t.Fatal(tr.Stats().ClientKind)
	}
	for i := 0; i < 60; i++ {
		if err := rdb.Set(bg, fmt.Sprint("key", i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	i := 0
	redistest.WaitFor(t, 5*time.Second, "pools on all 3 nodes", func() bool {
		// connections opened before a node was reached are tracked from
		// their next state change: keep traffic going
		i++
		rdb.Set(bg, fmt.Sprint("key", i%60), i, 0)
		addrs := map[string]bool{}
		for _, p := range tr.Stats().Pools {
			addrs[p.Addr] = true
		}
		return len(addrs) == 3
	})
	// A leaked Conn on one node's client.
	node, err := rdb.MasterForKey(bg, "some-key")
	if err != nil {
		t.Fatal(err)
	}
	c := leakyConn(bg, node)
	defer c.Close()
	l := onlyLeak(t, scanUntil(t, tr, 1))
	assertSite(t, l, "leakyConn")
	// A cluster-wide pubsub is long-lived by nature.
	ps := rdb.Subscribe(bg, "news")
	defer ps.Close()
	if _, err := ps.Receive(bg); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, 2*time.Second, "pubsub counted", func() bool { return tr.Stats().LongLived == 1 })
	s := tr.Stats()
	if s.Total != s.Idle+s.InUse || s.Leaked != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestRing(t *testing.T) {
	a, b := redistest.Private(t), redistest.Private(t)
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": a.Addr, "b": b.Addr}, PoolSize: 2, PoolTimeout: 100 * time.Millisecond})
	defer ring.Close()
	tr, err := redisleak.Instrument(ring, redisleak.Options{MaxHold: 150 * time.Millisecond, ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for i := 0; i < 40; i++ {
		if err := ring.Set(bg, fmt.Sprint("key", i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	s := tr.Stats()
	if s.ClientKind != redisleak.ClientKindRing || s.Total < 2 || s.Total != s.Idle+s.InUse {
		t.Fatalf("stats %+v", s)
	}
	// Exhaust one shard: the Ring returns the enriched error, the shard
	// client itself keeps the bare one (Ring's heartbeat compares with ==).
	var shard *redis.Client
	for _, c := range ring.GetShardClients() {
		if c.Options().Addr == a.Addr {
			shard = c
		}
	}
	held := holdTwo(bg, shard)
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	if err := shard.Ping(bg).Err(); err != redis.ErrPoolTimeout {
		t.Fatalf("shard client error %v (%T), want the bare redis.ErrPoolTimeout", err, err)
	}
}

func TestFailoverClient(t *testing.T) {
	master := redistest.Private(t)
	sentinel := redistest.Sentinel(t, master, "mymaster")
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: "mymaster", SentinelAddrs: []string{sentinel.Addr}})
	defer rdb.Close()
	tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 150 * time.Millisecond, ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if k := tr.Stats().ClientKind; k != redisleak.ClientKindFailover {
		t.Fatalf("client kind %q", k)
	}
	redistest.WaitFor(t, 5*time.Second, "master reachable through the sentinel", func() bool { return rdb.Ping(bg).Err() == nil })
	c := leakyConn(bg, rdb)
	defer c.Close()
	l := onlyLeak(t, scanUntil(t, tr, 1))
	assertSite(t, l, "leakyConn")
	if l.Addr != master.Addr {
		t.Fatalf("leak addr %q, want the master %q", l.Addr, master.Addr)
	}
}
