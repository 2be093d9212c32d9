package dedicated

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/holdtest"
	"github.com/redisleak/redisleak/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clientID runs CLIENT ID on h.
func clientID(t *testing.T, c *Conn) int64 {
	t.Helper()
	var id int64
	err := c.Do(context.Background(), func(ctx context.Context, h Handle) error {
		var err error
		id, err = h.Cmd.ClientID(ctx).Result()
		return err
	})
	if err != nil {
		t.Fatalf("CLIENT ID: %v", err)
	}
	return id
}

// listed reports whether a connection named name is in CLIENT LIST.
func listed(t *testing.T, rdb *redis.Client, name string) bool {
	t.Helper()
	list, err := rdb.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatalf("CLIENT LIST: %v", err)
	}
	return strings.Contains(list, " name="+name+" ")
}

// instrumentedProbe returns a client of srv with a tracker, on which a test
// takes a connection with a context to see the marks it carries (holdWith).
func instrumentedProbe(t *testing.T, srv *redistest.Server) (*redis.Client, *redisleak.Tracker) {
	t.Helper()
	probe := srv.Client()
	tr, err := redisleak.Instrument(probe, redisleak.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return probe, tr
}

func TestMarksAndReuse(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	probe, tr := instrumentedProbe(t, srv)
	c := New(rdb, Options{Owner: "test:owner", ClientID: true})
	defer c.Close()

	var ids []int64
	for i := 0; i < 3; i++ {
		err := c.Do(context.Background(), func(ctx context.Context, h Handle) error {
			if l, err := holdtest.HoldWith(ctx, probe, tr); err != nil {
				t.Errorf("taking a connection with ctx: %v", err)
			} else if l.LongLivedBy != redisleak.LongLivedMark || l.Owner != "test:owner" {
				t.Errorf("hold taken with ctx: long-lived by %q, owner %q; want %q, test:owner", l.LongLivedBy, l.Owner, redisleak.LongLivedMark)
			}
			if !h.Dedicated() || h.Node != rdb {
				t.Errorf("handle %+v: want a dedicated connection of rdb", h)
			}
			id, err := h.Cmd.ClientID(ctx).Result()
			if err == nil && id != h.ID {
				t.Errorf("Handle.ID = %d, CLIENT ID = %d", h.ID, id)
			}
			ids = append(ids, id)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if ids[0] == 0 || ids[1] != ids[0] || ids[2] != ids[0] {
		t.Fatalf("CLIENT IDs %v: want one connection for every call", ids)
	}
}

func TestPoolMode(t *testing.T) {
	srv := redistest.Private(t)
	probe, tr := instrumentedProbe(t, srv)
	ring := redis.NewRing(&redis.RingOptions{
		Addrs: map[string]string{"a": srv.Addr},
	})
	defer ring.Close()
	for _, long := range []bool{false, true} {
		c := New(ring, Options{Owner: "o", PoolLongLived: long})
		if err := c.Open(context.Background()); err != nil {
			t.Fatalf("Open in pool mode: %v", err)
		}
		err := c.Do(redisleak.WithLongLived(context.Background()), func(ctx context.Context, h Handle) error {
			if h.Dedicated() || h.Cmd != ring {
				t.Errorf("handle %+v: want the ring's pool", h)
			}
			if l, err := holdtest.HoldWith(ctx, probe, tr); err != nil {
				t.Errorf("taking a connection with ctx: %v", err)
			} else {
				if got := l.LongLivedBy == redisleak.LongLivedMark; got != long {
					t.Errorf("PoolLongLived %v: hold taken with ctx long-lived by %q", long, l.LongLivedBy)
				}
				if l.Owner != "o" {
					t.Errorf("owner = %q, want o", l.Owner)
				}
			}
			return h.Cmd.Ping(ctx).Err()
		})
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
	}
}

// TestReopenAfterNetworkError: a killed connection is replaced by the next
// call, named again; a Redis error reply keeps the connection.
func TestReopenAfterNetworkError(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	admin := srv.Client()
	c := New(rdb, Options{Name: "dedicated-test", ClientID: true})
	defer c.Close()
	ctx := context.Background()

	first := clientID(t, c)
	err := c.Do(ctx, func(ctx context.Context, h Handle) error {
		return h.Cmd.Do(ctx, "NO-SUCH-COMMAND").Err()
	})
	var re redis.Error
	if !errors.As(err, &re) || IsNetworkError(err) {
		t.Fatalf("unknown command: err = %v, want a Redis error reply", err)
	}
	if id := clientID(t, c); id != first {
		t.Fatalf("after an error reply CLIENT ID = %d, want %d (same connection)", id, first)
	}

	if err := admin.ClientKillByFilter(ctx, "ID", strconv.FormatInt(first, 10)).Err(); err != nil {
		t.Fatal(err)
	}
	err = c.Do(ctx, func(ctx context.Context, h Handle) error { return h.Cmd.Ping(ctx).Err() })
	if !IsNetworkError(err) {
		t.Fatalf("PING on a killed connection: err = %v, want a network error", err)
	}
	second := clientID(t, c)
	if second == first {
		t.Fatalf("CLIENT ID %d after the kill: the connection was not replaced", second)
	}
	if !listed(t, admin, "dedicated-test") {
		t.Fatal("the new connection lacks its client name")
	}
}

// TestReopenAfterRestart: calls fail while the server is down and the
// connection comes back, named, once it is up again.
func TestReopenAfterRestart(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client(func(o *redis.Options) { o.MaxRetries = -1 })
	c := New(rdb, Options{Name: "dedicated-restart", ClientID: true})
	defer c.Close()
	ctx := context.Background()
	if err := c.Open(ctx); err != nil {
		t.Fatal(err)
	}
	clientID(t, c)

	srv.Stop()
	ping := func() error {
		return c.Do(ctx, func(ctx context.Context, h Handle) error { return h.Cmd.Ping(ctx).Err() })
	}
	for i := 0; i < 2; i++ { // the old connection, then a failed open
		if err := ping(); !IsNetworkError(err) {
			t.Fatalf("call %d with the server down: err = %v, want a network error", i, err)
		}
	}
	if err := c.Open(ctx); err == nil {
		t.Fatal("Open with the server down succeeded")
	}

	srv.Restart()
	redistest.WaitFor(t, 30*time.Second, "a call after the restart", func() bool { return ping() == nil })
	if !listed(t, srv.Client(), "dedicated-restart") {
		t.Fatal("the reopened connection lacks its client name")
	}
}

func TestClose(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	admin := srv.Client()
	mine := errors.New("mine: closed")
	c := New(rdb, Options{Name: "dedicated-close", ErrClosed: mine})
	ctx := context.Background()
	if err := c.Open(ctx); err != nil {
		t.Fatal(err)
	}
	if !listed(t, admin, "dedicated-close") {
		t.Fatal("open connection not listed")
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	redistest.WaitFor(t, 10*time.Second, "the named connection to go", func() bool {
		return !listed(t, admin, "dedicated-close")
	})
	called := false
	if err := c.Do(ctx, func(context.Context, Handle) error { called = true; return nil }); err != mine {
		t.Fatalf("Do after Close: %v, want %v", err, mine)
	}
	if called {
		t.Fatal("Do after Close ran f")
	}
	if err := c.Open(ctx); err != mine {
		t.Fatalf("Open after Close: %v, want %v", err, mine)
	}

	d := New(rdb, Options{})
	_ = d.Close()
	if err := d.Do(ctx, func(context.Context, Handle) error { return nil }); err != ErrClosed {
		t.Fatalf("default ErrClosed: %v", err)
	}
}

// TestCloseWaitsForDo: Close returns after the running call.
func TestCloseWaitsForDo(t *testing.T) {
	srv := redistest.Private(t)
	c := New(srv.Client(), Options{})
	started, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- c.Do(context.Background(), func(ctx context.Context, h Handle) error {
			close(started)
			<-release
			return h.Cmd.Ping(ctx).Err()
		})
	}()
	<-started
	closed := make(chan struct{})
	go func() { _ = c.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while Do was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Do: %v", err)
	}
	<-closed
}

func TestIsNetworkError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{redis.Nil, false},
		{errors.New("EOF"), true},
		{context.Canceled, true},
	} {
		if got := IsNetworkError(tc.err); got != tc.want {
			t.Errorf("IsNetworkError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
