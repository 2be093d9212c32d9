package keyspace

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redisleak/redisleak/internal/redistest"
)

// gapSink collects OnGapDetail calls and counts OnGap calls.
type gapSink struct {
	mu    sync.Mutex
	gaps  []Gap
	plain int
	ch    chan Gap
}

func newGapSink() *gapSink { return &gapSink{ch: make(chan Gap, 100)} }

func (s *gapSink) onGap() {
	s.mu.Lock()
	s.plain++
	s.mu.Unlock()
}

func (s *gapSink) onDetail(g Gap) {
	s.mu.Lock()
	s.gaps = append(s.gaps, g)
	s.mu.Unlock()
	s.ch <- g
}

func (s *gapSink) next(t *testing.T) Gap {
	t.Helper()
	select {
	case g := <-s.ch:
		return g
	case <-time.After(15 * time.Second):
		t.Fatal("no OnGapDetail within 15 s")
		return Gap{}
	}
}

// TestGapDetailNamesTheNode: in a 3-primary cluster, killing the
// subscriber on one primary gives one gap, for that primary, with the
// reason, the error and the times; OnGap is still called.
func TestGapDetailNamesTheNode(t *testing.T) {
	cl := redistest.NewCluster(t, 3)
	cc := cl.Client(t)
	ctx := context.Background()
	gs := newGapSink()
	startManager(t, cc, Options{Flags: "K$", OnGap: gs.onGap, OnGapDetail: gs.onDetail}, func(m *Manager) {
		m.Handle("a:*", func(Event) {})
	})
	victim := cl.Nodes[1]
	killedAt := time.Now()
	if n, err := victim.Client().ClientKillByFilter(ctx, "TYPE", "pubsub").Result(); err != nil || n != 1 {
		t.Fatalf("CLIENT KILL TYPE pubsub on %s = %d, %v", victim.Addr, n, err)
	}
	g := gs.next(t)
	t.Logf("%v", g)
	if g.Node != victim.Addr || g.Reason != GapReconnect || g.Err == nil {
		t.Errorf("gap = %+v, want node %s, reason reconnect, with the error", g, victim.Addr)
	}
	if g.Since.Before(killedAt) || g.At.Before(g.Since) || time.Since(g.At) > 15*time.Second {
		t.Errorf("gap times: since %v, at %v, killed at %v", g.Since, g.At, killedAt)
	}
	time.Sleep(200 * time.Millisecond) // any other gap would come now
	gs.mu.Lock()
	defer gs.mu.Unlock()
	if len(gs.gaps) != 1 || gs.plain != 1 {
		t.Errorf("%d detailed gaps (%v), %d OnGap calls; want exactly one of each", len(gs.gaps), gs.gaps, gs.plain)
	}
}

// TestGapDetailFlagsRemoved: the periodic check that finds the flags
// removed reports the node and the reason, from the last check that found
// them.
func TestGapDetailFlagsRemoved(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	gs := newGapSink()
	startManager(t, rdb, Options{Flags: "Kx", CheckInterval: 50 * time.Millisecond, OnGapDetail: gs.onDetail}, nil)
	time.Sleep(120 * time.Millisecond) // a check or two that find the flags
	removedAt := time.Now()
	if err := rdb.ConfigSet(context.Background(), configParam, "").Err(); err != nil {
		t.Fatal(err)
	}
	g := gs.next(t)
	t.Logf("%v", g)
	if g.Node != srv.Addr || g.Reason != GapFlagsRemoved || g.Err != nil {
		t.Errorf("gap = %+v, want node %s, reason flags-removed", g, srv.Addr)
	}
	if g.Since.IsZero() || g.Since.After(removedAt) || g.At.Before(removedAt) {
		t.Errorf("gap times: since %v, at %v, flags removed at %v", g.Since, g.At, removedAt)
	}
}

func TestGapString(t *testing.T) {
	at := time.Date(2026, 1, 2, 12, 0, 1, 500e6, time.UTC)
	g := Gap{Node: "10.0.0.1:6379", Reason: GapReconnect, Err: errors.New("EOF"), Since: at.Add(-300 * time.Millisecond), At: at}
	if got, want := g.String(), "keyspace: gap on 10.0.0.1:6379 (reconnect: EOF) from 12:00:01.200 to 12:00:01.500"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	for r, name := range map[GapReason]string{GapReconnect: "reconnect", GapNodeJoined: "node-joined", GapFlagsRemoved: "flags-removed", 9: "GapReason(9)"} {
		if r.String() != name {
			t.Errorf("%d.String() = %q, want %q", int(r), r.String(), name)
		}
	}
}
