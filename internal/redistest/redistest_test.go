package redistest

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestPrivateRestart(t *testing.T) {
	s := Private(t)
	c := s.Client()
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Restart()
	// Data is gone after a restart: nothing is persisted.
	if n, err := c.Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("after restart: exists=%d err=%v", n, err)
	}
}

func TestCluster(t *testing.T) {
	cl := NewCluster(t, 3)
	c := cl.Client(t)
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
		if err := c.Set(ctx, k, k, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	var masters atomic.Int32
	if err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { masters.Add(1); return nil }); err != nil {
		t.Fatal(err)
	}
	if masters.Load() != 3 {
		t.Fatalf("masters=%d", masters.Load())
	}
}
