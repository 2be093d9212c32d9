package sse

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
)

// dialGate holds new connections of a client while closed.
type dialGate struct {
	mu   sync.Mutex
	open chan struct{}
}

func newDialGate() *dialGate {
	g := &dialGate{open: make(chan struct{})}
	close(g.open)
	return g
}

func (g *dialGate) close() {
	g.mu.Lock()
	g.open = make(chan struct{})
	g.mu.Unlock()
}

func (g *dialGate) release() {
	g.mu.Lock()
	select {
	case <-g.open:
	default:
		close(g.open)
	}
	g.mu.Unlock()
}

func (g *dialGate) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	select {
	case <-open:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// TestGapFillAfterSubscriberKilled: events published while a manager's
// subscriber connection is gone (CLIENT KILL, reconnection held back) reach
// its clients after the resubscription, in order, once each, followed by
// live events.
func TestGapFillAfterSubscriberKilled(t *testing.T) {
	srv := redistest.Private(t)
	gate := newDialGate()
	defer gate.release()
	rdbA := srv.Client(func(o *redis.Options) { o.Dialer = gate.dial; o.ClientName = "sse-a" })
	rdbB := srv.Client()
	ns := testNamespace(t)
	mA, httpA := startManager(t, rdbA, Options{Namespace: ns})
	mB, _ := startManager(t, rdbB, Options{Namespace: ns})

	s := open(t, httpA.URL+"?topic=g", nil)
	s.ready(t)
	first := publish(t, mB, "g", "", "before")
	if e := s.next(t); e.ID != first {
		t.Fatalf("got %+v", e)
	}

	// Kill A's subscriber and keep it from reconnecting.
	admin := srv.Client()
	ctx := context.Background()
	list, err := admin.ClientList(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	var victim string
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, "name=sse-a ") && strings.Contains(line, "cmd=subscribe") {
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, "id="); ok {
					victim = v
				}
			}
		}
	}
	if victim == "" {
		t.Fatalf("no subscriber of manager A in CLIENT LIST:\n%s", list)
	}
	gate.close()
	if err := admin.Do(ctx, "CLIENT", "KILL", "ID", victim).Err(); err != nil {
		t.Fatal(err)
	}
	var gap []string
	for i := 0; i < 20; i++ {
		gap = append(gap, publish(t, mB, "g", "", fmt.Sprintf("gap %d", i)))
		publish(t, mB, "other", "", "noise")
	}
	gate.release()
	for i, id := range gap {
		if e := s.next(t); e.ID != id || e.Data != fmt.Sprintf("gap %d", i) {
			t.Fatalf("gap event %d = %+v, want %s", i, e, id)
		}
	}
	live := publish(t, mB, "g", "", "live")
	if e := s.next(t); e.ID != live {
		t.Fatalf("after the gap got %+v, want %s", e, live)
	}
	st := mA.Stats()
	if st.Resubscribes < 1 || st.GapFills < 1 || st.GapEvents != 40 {
		t.Fatalf("stats %+v", st)
	}
}
