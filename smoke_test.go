package redisleak_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

func TestSmoke(t *testing.T) {
	addr := redistest.Addr(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 100 * time.Millisecond, ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx := context.Background()
	rdb.Set(ctx, "k", "v", 0)
	c := rdb.Conn()
	c.Ping(ctx)
	ps := rdb.Subscribe(ctx, "x")
	ps.Receive(ctx)
	time.Sleep(200 * time.Millisecond)
	t.Logf("stats %+v", tr.Stats())
	for _, l := range tr.Scan() {
		t.Logf("leak: %s", l)
	}
	c.Close()
	ps.Close()
	t.Logf("stats %+v", tr.Stats())
}
