package keyspace

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
)

// newMini starts a miniredis and a client for it, both closed when t ends.
func newMini(t *testing.T) (*miniredis.Miniredis, *redis.Client) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return mr, rdb
}

// startManager creates and starts a manager, closed when t ends.
func startManager(t *testing.T, rdb redis.UniversalClient, opts Options, setup func(*Manager)) *Manager {
	t.Helper()
	m, err := NewManager(rdb, opts)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	if setup != nil {
		setup(m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { closeManager(t, m) })
	return m
}

func closeManager(t *testing.T, m *Manager) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// recorder collects events and lets a test wait for a given one.
type recorder struct {
	mu     sync.Mutex
	events []Event
	ch     chan Event
}

func newRecorder() *recorder { return &recorder{ch: make(chan Event, 100000)} }

func (r *recorder) handle(ev Event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
	r.ch <- ev
}

// until waits for an event with key (and name, if not empty) and returns
// every event recorded up to and including it.
func (r *recorder) until(t *testing.T, key, name string) []Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-r.ch:
			if ev.Key == key && (name == "" || ev.Event == name) {
				r.mu.Lock()
				defer r.mu.Unlock()
				return append([]Event(nil), r.events...)
			}
		case <-timeout:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("no %q event for %q within 10s; got %v", name, key, pairs(r.events))
			return nil
		}
	}
}

// checkPerKeyOrder fails t unless the events of every key were recorded
// with increasing names (the tests name them e000, e001, ...).
func (r *recorder) checkPerKeyOrder(t *testing.T) {
	t.Helper()
	last := map[string]string{}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range r.events {
		if prev, ok := last[ev.Key]; ok && ev.Event <= prev {
			t.Fatalf("key %s: %s after %s", ev.Key, ev.Event, prev)
		}
		last[ev.Key] = ev.Event
	}
}

// pairs renders events as "event key" strings for comparison.
func pairs(evs []Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Event + " " + ev.Key
	}
	return out
}

// waitFor is redistest.WaitFor with 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	redistest.WaitFor(t, 10*time.Second, what, cond)
}

// errSink collects OnError reports.
type errSink struct {
	mu   sync.Mutex
	errs []error
	ch   chan error
}

func newErrSink() *errSink { return &errSink{ch: make(chan error, 1000)} }

func (s *errSink) report(err error) {
	s.mu.Lock()
	s.errs = append(s.errs, err)
	s.mu.Unlock()
	select {
	case s.ch <- err:
	default:
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
