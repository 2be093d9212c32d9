package keyspace

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// TestSlowHandlerHandsOffReading: handlers run on the reader's goroutine,
// so a handler that blocks would stop the reading; the hand-off check moves
// the reading to a new goroutine, the events that arrive meanwhile are
// queued, and the handler goroutine handles them in order once the slow
// handler returned. Handlers never run at the same time (one handler
// goroutine), and fast events are handled on the reader again afterwards.
func TestSlowHandlerHandsOffReading(t *testing.T) {
	mr, rdb := newMini(t)
	gate := make(chan struct{})
	var inFlight, maxInFlight atomic.Int32
	rec := newRecorder()
	m := startManager(t, rdb, Options{Config: ConfigSkip}, func(m *Manager) {
		m.Handle("k*", func(ev Event) {
			n := inFlight.Add(1)
			if n > maxInFlight.Load() {
				maxInFlight.Store(n)
			}
			if ev.Event == "first" {
				<-gate
			}
			rec.handle(ev)
			inFlight.Add(-1)
		})
	})
	mr.Publish("__keyspace@0__:k0", "first")
	const n = 50
	for i := 1; i <= n; i++ {
		mr.Publish(fmt.Sprintf("__keyspace@0__:k%d", i%3), fmt.Sprintf("e%03d", i))
	}
	// Only a new reader can read these while the first handler blocks.
	waitFor(t, "the events behind the slow handler to be read", func() bool { return m.Stats().Received == n+1 })
	if s := m.Stats(); s.Handoffs != 1 || s.Queued != n || s.Handled != 0 {
		t.Fatalf("Stats = %+v, want 1 hand-off, %d queued, none handled", s, n)
	}
	close(gate)
	waitFor(t, "the queue to drain", func() bool { return m.Stats().Handled == n+1 })
	rec.mu.Lock()
	got := pairs(rec.events)
	rec.mu.Unlock()
	want := []string{"first k0"}
	for i := 1; i <= n; i++ {
		want = append(want, fmt.Sprintf("e%03d k%d", i, i%3))
	}
	if !equalStrings(got, want) {
		t.Fatalf("handled out of order:\n got %q\nwant %q", got, want)
	}
	if maxInFlight.Load() != 1 {
		t.Errorf("%d handlers ran at once, want 1", maxInFlight.Load())
	}
	// Fast events are handled again, and the check goes back to sleep (no
	// timer while no handler runs). (Whether they ran on the reader is not
	// asserted: a reader descheduled for two ticks under load is, rightly,
	// taken over too.)
	for i := 0; i < 20; i++ {
		mr.Publish("__keyspace@0__:k9", "set")
	}
	waitFor(t, "the fast events", func() bool { return m.Stats().Handled == n+21 })
	waitFor(t, "the hand-off check to sleep", func() bool { return !m.handoffArmed.Load() })
}

// TestHandoffsUnderMixedLoad: a stream in which some handler calls take
// longer than the hand-off check allows (repeated hand-offs, back and forth
// between readers and the handler goroutine) loses nothing, keeps every
// key's events in order and never runs two handler calls at once.
func TestHandoffsUnderMixedLoad(t *testing.T) {
	mr, rdb := newMini(t)
	const keys, per = 10, 150
	var inFlight, overlap, handled atomic.Int32
	rec := newRecorder()
	m := startManager(t, rdb, Options{Config: ConfigSkip, QueueSize: 64}, func(m *Manager) {
		m.Handle("key*", func(ev Event) {
			if inFlight.Add(1) > 1 {
				overlap.Add(1)
			}
			if ev.Event[len(ev.Event)-2:] == "00" || ev.Event[len(ev.Event)-2:] == "50" {
				time.Sleep(3 * handoffTick)
			}
			rec.handle(ev)
			inFlight.Add(-1)
			handled.Add(1)
		})
	})
	for i := 0; i < per; i++ {
		for k := 0; k < keys; k++ {
			mr.Publish(fmt.Sprintf("__keyspace@0__:key%d", k), fmt.Sprintf("e%04d", i))
		}
	}
	waitFor(t, "every event handled", func() bool { return handled.Load() == keys*per })
	if overlap.Load() != 0 {
		t.Errorf("handler calls overlapped %d times", overlap.Load())
	}
	if s := m.Stats(); s.Handoffs == 0 || s.Dropped != 0 || s.Received != keys*per {
		t.Errorf("Stats = %+v, want hand-offs, nothing dropped, all received", s)
	}
	rec.checkPerKeyOrder(t)
}

// TestHandleFromHandler: a handler that adds a handler waits for the new
// subscription's confirmation, which only a reader can read; the hand-off
// gives it one, and the new handler gets its events.
func TestHandleFromHandler(t *testing.T) {
	mr, rdb := newMini(t)
	added := make(chan error, 1)
	rec := newRecorder()
	m := startManager(t, rdb, Options{Config: ConfigSkip}, func(m *Manager) {
		m.Handle("first", func(Event) {
			added <- m.HandleEvents("second:*", rec.handle)
		})
	})
	mr.Publish("__keyspace@0__:first", "set")
	select {
	case err := <-added:
		if err != nil {
			t.Fatalf("HandleEvents from a handler: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("HandleEvents from a handler did not return")
	}
	if s := m.Stats(); s.Handoffs == 0 {
		t.Errorf("Stats = %+v, want a hand-off", s)
	}
	mr.Publish("__keyspace@0__:second:1", "set")
	rec.until(t, "second:1", "set")
}
