package sse

import (
	"context"
	"fmt"
	"net"
	"net/http/httptest"
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

// killSubscriber kills the pub/sub connection of the client named name.
func killSubscriber(t *testing.T, srv *redistest.Server, name string) {
	t.Helper()
	admin := srv.Client()
	ctx := context.Background()
	list, err := admin.ClientList(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	var victim string
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, "name="+name+" ") && strings.Contains(line, "cmd=subscribe") {
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, "id="); ok {
					victim = v
				}
			}
		}
	}
	if victim == "" {
		t.Fatalf("no subscriber named %s in CLIENT LIST:\n%s", name, list)
	}
	if err := admin.Do(ctx, "CLIENT", "KILL", "ID", victim).Err(); err != nil {
		t.Fatal(err)
	}
}

// gapSetup is two managers on one private server; manager A's client dials
// through a gate. A stream on A has received one event (first); then A's
// subscriber is killed and kept from reconnecting until gate.release.
type gapSetup struct {
	gate   *dialGate
	rdbB   *redis.Client
	mA, mB *Manager
	httpA  *httptest.Server
	s      *stream
	first  string
}

func newGapSetup(t *testing.T) *gapSetup {
	t.Helper()
	srv := redistest.Private(t)
	g := &gapSetup{gate: newDialGate()}
	rdbA := srv.Client(func(o *redis.Options) { o.Dialer = g.gate.dial; o.ClientName = "sse-a" })
	g.rdbB = srv.Client()
	ns := testNamespace(t)
	g.mA, g.httpA = startManager(t, rdbA, Options{Namespace: ns})
	g.mB, _ = startManager(t, g.rdbB, Options{Namespace: ns})
	g.s = open(t, g.httpA.URL+"?topic=g", nil)
	g.s.ready(t)
	g.first = publish(t, g.mB, "g", "", "before")
	if e := g.s.next(t); e.ID != g.first {
		t.Fatalf("got %+v", e)
	}
	g.gate.close()
	killSubscriber(t, srv, "sse-a")
	return g
}

// TestGapFillAfterSubscriberKilled: events published while a manager's
// subscriber connection is gone (CLIENT KILL, reconnection held back) reach
// its clients after the resubscription, in order, once each, followed by
// live events.
func TestGapFillAfterSubscriberKilled(t *testing.T) {
	g := newGapSetup(t)
	defer g.gate.release()
	gate, mA, mB, s := g.gate, g.mA, g.mB, g.s
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
	if st.Resubscribes < 1 || st.GapFills < 1 || st.GapEvents != 40 || st.Resyncs != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestGapBeyondHistory: when the history was trimmed past the last event a
// manager delivered before its subscriber came back, the gap cannot be
// filled: every stream ends with a comment, and a client resuming from its
// cursor gets a reset instead of a silent hole.
func TestGapBeyondHistory(t *testing.T) {
	g := newGapSetup(t)
	defer g.gate.release()
	gate, rdbB, mA, mB, httpA, s, cursor := g.gate, g.rdbB, g.mA, g.mB, g.httpA, g.s, g.first
	var newest string
	for i := 0; i < 20; i++ {
		newest = publish(t, mB, "g", "", fmt.Sprintf("gap %d", i))
	}
	if err := rdbB.XTrimMaxLen(context.Background(), mB.stream, 5).Err(); err != nil {
		t.Fatal(err)
	}
	gate.release()
	blocks := s.waitEnd(t)
	if len(blocks) == 0 || len(blocks[len(blocks)-1].Comments) != 1 || blocks[len(blocks)-1].Comments[0] != "closing: resume from your cursor" {
		t.Fatalf("stream ended with %+v", blocks)
	}
	for _, b := range blocks {
		if b.HasData {
			t.Fatalf("got an event across the hole: %+v", b)
		}
	}
	s2 := open(t, httpA.URL+"?topic=g&lastEventId="+cursor, nil)
	s2.ready(t)
	if e := s2.next(t); e.Event != "reset" || e.ID != newest {
		t.Fatalf("resume got %+v, want a reset to %s", e, newest)
	}
	if st := mA.Stats(); st.Resyncs != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestGapAfterHistoryLost: while a manager's subscriber is away, the history
// is lost (here deleted, as a Redis restart without persistence would) and
// a new one starts. After the resubscription the open stream gets one
// "history lost" reset whose id is the new origin, then every event of the
// new history in order, then live events; it is not ended.
func TestGapAfterHistoryLost(t *testing.T) {
	g := newGapSetup(t)
	defer g.gate.release()
	ctx := context.Background()
	if err := g.rdbB.Del(ctx, g.mB.stream, g.mB.originKey).Err(); err != nil {
		t.Fatal(err)
	}
	var gap []string
	for i := 0; i < 5; i++ {
		gap = append(gap, publish(t, g.mB, "g", "", fmt.Sprintf("new %d", i)))
	}
	origin, err := g.rdbB.Get(ctx, g.mB.originKey).Result()
	if err != nil {
		t.Fatal(err)
	}
	g.gate.release()
	if e := g.s.next(t); e.Event != ResetEvent || e.ID != origin || e.Data != whyLost {
		t.Fatalf("after the resubscription got %+v, want a reset to %s saying %q", e, origin, whyLost)
	}
	for i, id := range gap {
		if e := g.s.next(t); e.ID != id || e.Data != fmt.Sprintf("new %d", i) {
			t.Fatalf("event %d of the new history = %+v, want %s", i, e, id)
		}
	}
	live := publish(t, g.mB, "g", "", "live")
	if e := g.s.next(t); e.ID != live {
		t.Fatalf("after the new history got %+v, want %s", e, live)
	}
	if st := g.mA.Stats(); st.HistoryLosses != 1 || st.Resyncs != 0 || st.GapEvents != 5 {
		t.Fatalf("stats %+v", st)
	}
}

// TestGapAfterHistoryLostAndTrimmed: as TestGapAfterHistoryLost, but the new
// history is trimmed past its origin before the subscriber returns: the
// stream ends, and resuming from the old cursor gets one reset that says
// the history was lost and trimmed, with the newest id.
func TestGapAfterHistoryLostAndTrimmed(t *testing.T) {
	g := newGapSetup(t)
	defer g.gate.release()
	ctx := context.Background()
	if err := g.rdbB.Del(ctx, g.mB.stream, g.mB.originKey).Err(); err != nil {
		t.Fatal(err)
	}
	var newest string
	for i := 0; i < 20; i++ {
		newest = publish(t, g.mB, "g", "", fmt.Sprintf("new %d", i))
	}
	if err := g.rdbB.XTrimMaxLen(ctx, g.mB.stream, 5).Err(); err != nil {
		t.Fatal(err)
	}
	g.gate.release()
	blocks := g.s.waitEnd(t)
	if len(blocks) == 0 || len(blocks[len(blocks)-1].Comments) != 1 || blocks[len(blocks)-1].Comments[0] != "closing: resume from your cursor" {
		t.Fatalf("stream ended with %+v", blocks)
	}
	s2 := open(t, g.httpA.URL+"?topic=g&lastEventId="+g.first, nil)
	s2.ready(t)
	if e := s2.next(t); e.Event != ResetEvent || e.ID != newest || e.Data != whyLostTrimmed {
		t.Fatalf("resume got %+v, want a reset to %s saying %q", e, newest, whyLostTrimmed)
	}
	if st := g.mA.Stats(); st.HistoryLosses != 1 || st.Resyncs != 1 {
		t.Fatalf("stats %+v", st)
	}
}
