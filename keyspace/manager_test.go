package keyspace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/holdtest"
)

// Unit tests on miniredis: it has no keyspace notifications and no CONFIG,
// so events are published by hand and the config mode is ConfigSkip (or is
// the subject of the test).

func TestKeyspaceEventsForWatchedKeysOnly(t *testing.T) {
	mr, rdb := newMini(t)
	rec := newRecorder()
	startManager(t, rdb, Options{Config: ConfigSkip}, func(m *Manager) {
		m.Handle("user:*", rec.handle)
	})
	mr.Publish("__keyspace@0__:user:1", "set")
	mr.Publish("__keyspace@0__:order:1", "set") // not watched
	mr.Publish("__keyspace@1__:user:1", "set")  // other db
	mr.Publish("__keyspace@0__:user:2", "expired")
	mr.Publish("__keyspace@0__:user:end", "del")
	got := pairs(rec.until(t, "user:end", EventDel))
	want := []string{"set user:1", "expired user:2", "del user:end"}
	if !equalStrings(got, want) {
		t.Fatalf("events = %q, want %q", got, want)
	}
	ev := rec.events[0]
	if ev.DB != 0 || ev.Channel != "__keyspace@0__:user:1" || ev.Node != mr.Addr() || !ev.Known() {
		t.Errorf("event fields: %+v", ev)
	}
}

func TestKeyeventHandlerWithEventFilter(t *testing.T) {
	mr, rdb := newMini(t)
	rec := newRecorder()
	startManager(t, rdb, Options{Config: ConfigSkip, DB: 2}, func(m *Manager) {
		if err := m.HandleEvents("session:*", rec.handle, EventExpired, EventDel); err != nil {
			t.Fatal(err)
		}
	})
	mr.Publish("__keyevent@2__:expired", "session:1")
	mr.Publish("__keyevent@2__:expired", "cart:1")    // key not watched
	mr.Publish("__keyevent@2__:set", "session:1")     // event not watched
	mr.Publish("__keyevent@0__:expired", "session:2") // other db
	mr.Publish("__keyevent@2__:del", "session:3")
	got := pairs(rec.until(t, "session:3", EventDel))
	want := []string{"expired session:1", "del session:3"}
	if !equalStrings(got, want) {
		t.Fatalf("events = %q, want %q", got, want)
	}
	if rec.events[0].DB != 2 || rec.events[0].Channel != "__keyevent@2__:expired" {
		t.Errorf("event fields: %+v", rec.events[0])
	}
}

func TestKeyspaceHandlerWithEventFilterWithoutE(t *testing.T) {
	mr, rdb := newMini(t)
	rec := newRecorder()
	startManager(t, rdb, Options{Config: ConfigSkip, Flags: "Kgx"}, func(m *Manager) {
		if err := m.HandleEvents("job:*", rec.handle, EventExpired); err != nil {
			t.Fatal(err)
		}
	})
	mr.Publish("__keyspace@0__:job:1", "del") // filtered locally
	mr.Publish("__keyspace@0__:job:2", "expired")
	got := pairs(rec.until(t, "job:2", EventExpired))
	if want := []string{"expired job:2"}; !equalStrings(got, want) {
		t.Fatalf("events = %q, want %q", got, want)
	}
}

func TestUnknownEventNamesKeptRaw(t *testing.T) {
	mr, rdb := newMini(t)
	rec := newRecorder()
	startManager(t, rdb, Options{Config: ConfigSkip}, func(m *Manager) { m.Handle("*", rec.handle) })
	mr.Publish("__keyspace@0__:k", "mymodule.evt")
	evs := rec.until(t, "k", "")
	if evs[0].Event != "mymodule.evt" || evs[0].Known() {
		t.Fatalf("event = %q known=%v, want raw unknown name", evs[0].Event, evs[0].Known())
	}
}

func TestHandlerContextHasNoLongLivedMark(t *testing.T) {
	mr, rdb := newMini(t)
	quiet := redisleak.Options{Logger: slog.New(slog.DiscardHandler)}
	tr, err := redisleak.Instrument(rdb, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	// A client of its own, instrumented, on which the test takes a
	// connection with the handler's context.
	probe := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer probe.Close()
	ptr, err := redisleak.Instrument(probe, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer ptr.Close()
	rec := newRecorder()
	ctx := redisleak.WithLongLived(context.WithValue(context.Background(), ctxKey{}, "v"))
	m, err := NewManager(rdb, Options{Config: ConfigSkip})
	if err != nil {
		t.Fatal(err)
	}
	m.Handle("*", rec.handle)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer closeManager(t, m)
	mr.Publish("__keyspace@0__:k", "set")
	ev := rec.until(t, "k", "")[0]
	hctx := ev.Context()
	if h, err := holdtest.HoldWith(hctx, probe, ptr); err != nil {
		t.Fatalf("taking a connection with the handler context: %v", err)
	} else if h.LongLivedBy == redisleak.LongLivedMark {
		t.Errorf("handler context carries the long-lived mark: its hold %v", h)
	}
	if hctx.Value(ctxKey{}) != "v" {
		t.Error("handler context lost the values of Start's context")
	}
	if hctx.Err() != nil {
		t.Error("handler context already done")
	}
	// The connections the manager takes while it runs carry the long-lived
	// mark and the owner: the subscriber's new connection after a server
	// restart, dialed with the run's context.
	var old redisleak.Leak
	for _, h := range tr.Holds() {
		if h.Kind == redisleak.KindPubSub {
			old = h
		}
	}
	if old.ConnID == 0 {
		t.Fatalf("no subscriber connection in %v", tr.Holds())
	}
	mr.Close()
	if err := mr.Restart(); err != nil {
		t.Fatal(err)
	}
	var sub redisleak.Leak
	waitFor(t, "the subscriber's new connection", func() bool {
		for _, h := range tr.Holds() {
			if h.Kind == redisleak.KindPubSub && h.ConnID != old.ConnID {
				sub = h
				return true
			}
		}
		return false
	})
	if sub.LongLivedBy != redisleak.LongLivedMark || sub.Owner != Owner {
		t.Errorf("connection taken while running: long-lived by %q, owner %q; want %q, %q", sub.LongLivedBy, sub.Owner, redisleak.LongLivedMark, Owner)
	}
	closeManager(t, m)
	if hctx.Err() == nil {
		t.Error("handler context not cancelled by Close")
	}
}

type ctxKey struct{}

func TestHandlerPanicIsRecovered(t *testing.T) {
	mr, rdb := newMini(t)
	rec := newRecorder()
	errs := newErrSink()
	m := startManager(t, rdb, Options{Config: ConfigSkip, OnError: errs.report}, func(m *Manager) {
		m.Handle("*", func(ev Event) {
			if ev.Key == "boom" {
				panic("handler bug")
			}
			rec.handle(ev)
		})
	})
	mr.Publish("__keyspace@0__:boom", "set")
	mr.Publish("__keyspace@0__:after", "set")
	rec.until(t, "after", "")
	if s := m.Stats(); s.Panics != 1 {
		t.Errorf("Stats.Panics = %d, want 1", s.Panics)
	}
	var pe *PanicError
	if err := <-errs.ch; !errors.As(err, &pe) || pe.Value != "handler bug" || pe.Event.Key != "boom" || len(pe.Stack) == 0 {
		t.Errorf("OnError got %v, want *PanicError for boom", err)
	}
}

func TestOverflowPolicies(t *testing.T) {
	tests := []struct {
		policy Overflow
		want   []string // keys handled
	}{
		{OverflowDropNewest, []string{"k0", "k1", "k2", "k3"}},
		{OverflowDropOldest, []string{"k0", "k3", "k4", "k5"}},
	}
	for _, tt := range tests {
		t.Run(tt.policy.String(), func(t *testing.T) {
			mr, rdb := newMini(t)
			started := make(chan struct{})
			gate := make(chan struct{})
			rec := newRecorder()
			m := startManager(t, rdb, Options{Config: ConfigSkip, QueueSize: 3, Overflow: tt.policy}, func(m *Manager) {
				m.Handle("*", func(ev Event) {
					if ev.Key == "k0" {
						close(started)
						<-gate
					}
					rec.handle(ev)
				})
			})
			mr.Publish("__keyspace@0__:k0", "set")
			<-started // the worker holds k0; the queue (3) is empty
			for i := 1; i <= 5; i++ {
				mr.Publish(fmt.Sprintf("__keyspace@0__:k%d", i), "set")
			}
			waitFor(t, "6 events received", func() bool { return m.Stats().Received == 6 })
			if s := m.Stats(); s.Dropped != 2 || s.Queued != 3 {
				t.Errorf("with a full queue: Dropped=%d Queued=%d, want 2 and 3", s.Dropped, s.Queued)
			}
			close(gate)
			last := tt.want[len(tt.want)-1]
			if got := pairs(rec.until(t, last, "")); !equalStrings(keysOf(got), tt.want) {
				t.Errorf("handled %q, want keys %q", got, tt.want)
			}
		})
	}
}

func keysOf(pairs []string) []string {
	out := make([]string, len(pairs))
	for i, p := range pairs {
		out[i] = p[strings.IndexByte(p, ' ')+1:]
	}
	return out
}

func TestOverflowBlockLosesNothing(t *testing.T) {
	mr, rdb := newMini(t)
	rec := newRecorder()
	m := startManager(t, rdb, Options{Config: ConfigSkip, QueueSize: 1}, func(m *Manager) { m.Handle("*", rec.handle) })
	const n = 300
	for i := 0; i < n; i++ {
		mr.Publish(fmt.Sprintf("__keyspace@0__:k%d", i), "set")
	}
	got := rec.until(t, fmt.Sprintf("k%d", n-1), "")
	if len(got) != n {
		t.Fatalf("handled %d events, want %d", len(got), n)
	}
	for i, ev := range got {
		if ev.Key != fmt.Sprintf("k%d", i) {
			t.Fatalf("event %d is %q: out of order", i, ev.Key)
		}
	}
	if s := m.Stats(); s.Dropped != 0 || s.Received != n {
		t.Errorf("Stats = %+v", s)
	}
}

func TestPerKeyOrderWithWorkers(t *testing.T) {
	mr, rdb := newMini(t)
	rec := newRecorder()
	const keys, per = 8, 50
	var done atomic.Int32
	finished := make(chan struct{})
	startManager(t, rdb, Options{Config: ConfigSkip, Workers: 4}, func(m *Manager) {
		m.Handle("*", func(ev Event) {
			rec.handle(ev)
			if done.Add(1) == keys*per {
				close(finished)
			}
		})
	})
	for i := 0; i < per; i++ {
		for k := 0; k < keys; k++ {
			mr.Publish(fmt.Sprintf("__keyspace@0__:key%d", k), fmt.Sprintf("e%03d", i))
		}
	}
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		t.Fatalf("handled %d of %d events", done.Load(), keys*per)
	}
	rec.checkPerKeyOrder(t)
}

func TestHandleAfterStart(t *testing.T) {
	mr, rdb := newMini(t)
	first, late := newRecorder(), newRecorder()
	m := startManager(t, rdb, Options{Config: ConfigSkip}, func(m *Manager) { m.Handle("a:*", first.handle) })
	if err := m.HandleEvents("b:*", late.handle); err != nil {
		t.Fatal(err)
	}
	// HandleEvents returned after the server confirmed: nothing is missed.
	mr.Publish("__keyspace@0__:b:1", "set")
	mr.Publish("__keyspace@0__:a:1", "set")
	late.until(t, "b:1", "")
	first.until(t, "a:1", "")
}

func TestBadInput(t *testing.T) {
	_, rdb := newMini(t)
	for _, o := range []Options{
		{Flags: "KEQ"}, {Flags: "A"}, {Flags: "KE"}, {DB: -1}, {QueueSize: -1},
		{Workers: -2}, {Config: 9}, {Overflow: 7}, {PingInterval: -time.Second}, {CheckInterval: -1},
	} {
		if _, err := NewManager(rdb, o); !errors.Is(err, ErrBadFlags) && !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("NewManager(%+v) err = %v, want ErrBadFlags or ErrInvalidOptions", o, err)
		}
	}
	if _, err := NewManager(nil, Options{}); !errors.Is(err, ErrUnsupportedClient) {
		t.Errorf("nil client: err = %v", err)
	}
	if _, err := NewManager(wrapped{rdb}, Options{}); !errors.Is(err, ErrUnsupportedClient) {
		t.Errorf("wrapped client: err = %v", err)
	}
	m, err := NewManager(rdb, Options{Flags: "K$", Config: ConfigSkip})
	if err != nil {
		t.Fatal(err)
	}
	fn := func(Event) {}
	for name, err := range map[string]error{
		"empty pattern":   m.HandleEvents("", fn),
		"nil fn":          m.HandleEvents("*", nil),
		"empty event":     m.HandleEvents("*", fn, ""),
		"flag not in set": m.HandleEvents("*", fn, EventExpired),
	} {
		if !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("%s: err = %v, want ErrInvalidOptions", name, err)
		}
	}
	if err := m.HandleEvents("*", fn, EventSet, "custom"); err != nil {
		t.Errorf("valid registration: %v", err)
	}
	// Handle has no error result: the next Start reports it.
	m.Handle("", fn)
	if err := m.Start(context.Background()); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("Start after bad Handle: err = %v, want ErrInvalidOptions", err)
	}
	if err := m.Start(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after failed Start: err = %v, want ErrClosed", err)
	}
}

type wrapped struct{ redis.UniversalClient }

func TestLifecycle(t *testing.T) {
	_, rdb := newMini(t)
	m, err := NewManager(rdb, Options{Config: ConfigSkip})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(context.Background()); err != nil {
		t.Errorf("Close before Start: %v", err)
	}
	if err := m.Start(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v", err)
	}
	if err := m.HandleEvents("*", func(Event) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("HandleEvents after Close: %v", err)
	}

	m = startManager(t, rdb, Options{Config: ConfigSkip}, nil) // no handlers yet
	if err := m.Start(context.Background()); !errors.Is(err, ErrStarted) {
		t.Errorf("second Start: %v", err)
	}
	if s := m.Stats(); s.Nodes != 1 {
		t.Errorf("Stats.Nodes = %d, want 1", s.Nodes)
	}
	closeManager(t, m)
	closeManager(t, m) // second Close: no-op
	if s := m.Stats(); s.Nodes != 0 {
		t.Errorf("after Close Stats.Nodes = %d", s.Nodes)
	}
}

func TestCloseDrainsQueue(t *testing.T) {
	mr, rdb := newMini(t)
	gate := make(chan struct{})
	var handled atomic.Int32
	m := startManager(t, rdb, Options{Config: ConfigSkip}, func(m *Manager) {
		m.Handle("*", func(Event) { <-gate; handled.Add(1) })
	})
	for i := 0; i < 20; i++ {
		mr.Publish(fmt.Sprintf("__keyspace@0__:k%d", i), "set")
	}
	waitFor(t, "20 events received", func() bool { return m.Stats().Received == 20 })
	close(gate)
	closeManager(t, m)
	if handled.Load() != 20 {
		t.Errorf("handled %d of 20 queued events before Close returned", handled.Load())
	}
}

func TestCloseDeadlineDiscardsQueue(t *testing.T) {
	mr, rdb := newMini(t)
	gate := make(chan struct{})
	started := make(chan struct{}, 1)
	m, err := NewManager(rdb, Options{Config: ConfigSkip})
	if err != nil {
		t.Fatal(err)
	}
	m.Handle("*", func(Event) {
		select {
		case started <- struct{}{}:
		default:
		}
		<-gate
	})
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		mr.Publish(fmt.Sprintf("__keyspace@0__:k%d", i), "set")
	}
	waitFor(t, "10 events received", func() bool { return m.Stats().Received == 10 })
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	go func() {
		// Release the blocked handler once Close has given up on the queue.
		for !m.abandon.Load() {
			time.Sleep(time.Millisecond)
		}
		close(gate)
	}()
	if err := m.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v, want DeadlineExceeded", err)
	}
	if s := m.Stats(); s.Discarded != 9 || s.Handled != 1 {
		t.Errorf("Stats = %+v, want 9 discarded, 1 handled", s)
	}
}

func TestConfigModesOnMiniredis(t *testing.T) {
	// Without CONFIG nothing can be read: every mode says so, naming the
	// node, and runs.
	_, rdb := newMini(t)
	for _, mode := range []ConfigMode{ConfigMerge, ConfigVerify, ConfigWarn} {
		errs := newErrSink()
		startManager(t, rdb, Options{Config: mode, OnError: errs.report}, nil)
		err := <-errs.ch
		var ne *NodeError
		if !errors.Is(err, ErrConfigUnavailable) || !errors.As(err, &ne) || ne.Node != rdb.Options().Addr {
			t.Errorf("%v on miniredis: OnError got %v, want ErrConfigUnavailable naming the node", mode, err)
		}
	}
}

func TestRingSubscribesEveryShard(t *testing.T) {
	mr1, _ := newMini(t)
	mr2, _ := newMini(t)
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": mr1.Addr(), "b": mr2.Addr()}})
	defer ring.Close()
	rec := newRecorder()
	m := startManager(t, ring, Options{Config: ConfigSkip}, func(m *Manager) { m.Handle("*", rec.handle) })
	if n := len(m.Nodes()); n != 2 {
		t.Fatalf("subscribed to %d shards, want 2", n)
	}
	mr1.Publish("__keyspace@0__:on1", "set")
	mr2.Publish("__keyspace@0__:on2", "set")
	waitFor(t, "events from both shards", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.events) == 2
	})
	if got := pairs(rec.events); !(equalStrings(got, []string{"set on1", "set on2"}) || equalStrings(got, []string{"set on2", "set on1"})) {
		t.Errorf("events %q", got)
	}
}

func TestInlineHandlers(t *testing.T) {
	mr, rdb := newMini(t)
	rec := newRecorder()
	errs := newErrSink()
	release := make(chan struct{})
	m := startManager(t, rdb, Options{Config: ConfigSkip, Inline: true, PingInterval: 20 * time.Millisecond, OnError: errs.report}, func(m *Manager) {
		m.Handle("*", func(ev Event) {
			switch ev.Key {
			case "boom":
				panic("inline bug")
			case "slow":
				<-release
			}
			rec.handle(ev)
		})
	})
	mr.Publish("__keyspace@0__:boom", "set")
	mr.Publish("__keyspace@0__:a", "set")
	rec.until(t, "a", "")
	// A handler that blocks for many ping intervals is no silent connection.
	mr.Publish("__keyspace@0__:slow", "set")
	waitFor(t, "the slow handler to start", func() bool { return m.Stats().Received == 3 })
	time.AfterFunc(200*time.Millisecond, func() { close(release) })
	mr.Publish("__keyspace@0__:b", "set")
	got := pairs(rec.until(t, "b", ""))
	if want := []string{"set a", "set slow", "set b"}; !equalStrings(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	if s := m.Stats(); s.Panics != 1 || s.Reconnects != 0 || s.Queued != 0 {
		t.Errorf("Stats = %+v, want 1 panic and no reconnect", s)
	}
	for _, o := range []Options{{Inline: true, QueueSize: 10}, {Inline: true, Workers: 2}, {Inline: true, Overflow: OverflowDropNewest}} {
		if _, err := NewManager(rdb, o); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("NewManager(%+v) = %v, want ErrInvalidOptions", o, err)
		}
	}
}

func TestCloseAfterFailedStartAndDuringStart(t *testing.T) {
	// Nothing listens on the port: Start fails, Close after it is a no-op.
	_, rdb := newMini(t)
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer dead.Close()
	m, err := NewManager(dead, Options{Config: ConfigSkip})
	if err != nil {
		t.Fatal(err)
	}
	m.Handle("*", func(Event) {})
	if err := m.Start(context.Background()); err == nil {
		t.Fatal("Start against a dead address succeeded")
	}
	if err := m.Close(context.Background()); err != nil {
		t.Errorf("Close after failed Start: %v", err)
	}

	// Close racing Start: no panic, no goroutine left (goleak), Start
	// reports success or ErrClosed.
	for i := 0; i < 20; i++ {
		m, err := NewManager(rdb, Options{Config: ConfigSkip})
		if err != nil {
			t.Fatal(err)
		}
		m.Handle("*", func(Event) {})
		started := make(chan error, 1)
		go func() { started <- m.Start(context.Background()) }()
		if err := m.Close(context.Background()); err != nil {
			t.Errorf("Close during Start: %v", err)
		}
		if err := <-started; err != nil && !errors.Is(err, ErrClosed) && !errors.Is(err, ErrStarted) {
			t.Errorf("Start racing Close: %v", err)
		}
	}
}

// TestIdleBeyondReadTimeout: the subscriber reads without a deadline per
// message; the deadline the connection's handshake set (ReadTimeout) must
// not end a quiet subscription.
func TestIdleBeyondReadTimeout(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ReadTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	rec := newRecorder()
	m := startManager(t, rdb, Options{Config: ConfigSkip, PingInterval: time.Minute}, func(m *Manager) { m.Handle("*", rec.handle) })
	for i := 0; i < 2; i++ {
		time.Sleep(300 * time.Millisecond)
		key := fmt.Sprintf("k%d", i)
		mr.Publish("__keyspace@0__:"+key, "set")
		rec.until(t, key, "")
	}
	if s := m.Stats(); s.Reconnects != 0 || s.Gaps != 0 {
		t.Errorf("Stats = %+v, want no reconnect and no gap", s)
	}
}
