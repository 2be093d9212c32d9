package keyspace

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
)

// rateProducer sends SETs of keys prefix+<i> over a raw TCP connection at
// about rate per second (in slices of 10 ms) for d, reading and discarding
// the replies on its own goroutine, and returns how many it sent. Raw RESP
// keeps the producer's CPU cost small, so that under the race detector the
// test process spends its time consuming.
func rateProducer(ctx context.Context, addr, prefix string, rate int, d time.Duration) (int, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	var replies sync.WaitGroup
	replies.Add(1)
	go func() { defer replies.Done(); _, _ = io.Copy(io.Discard, c) }()
	defer replies.Wait()
	defer func() { _ = c.(*net.TCPConn).CloseWrite() }()
	per := rate / 100
	var buf []byte
	sent := 0
	start := time.Now()
	for slice := 0; time.Since(start) < d; slice++ {
		buf = buf[:0]
		for i := 0; i < per; i++ {
			key := prefix + strconv.Itoa(sent+i)
			buf = fmt.Appendf(buf, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\nv\r\n", len(key), key)
		}
		if _, err := c.Write(buf); err != nil {
			return sent, err
		}
		sent += per
		// Keep the average rate: sleep until this slice's end.
		if wait := time.Until(start.Add(time.Duration(slice+1) * 10 * time.Millisecond)); wait > 0 {
			select {
			case <-ctx.Done():
				return sent, ctx.Err()
			case <-time.After(wait):
			}
		}
	}
	return sent, nil
}

// pubsubClients returns the ids of the server's pub/sub clients.
func pubsubClients(ctx context.Context, rdb *redis.Client) ([]string, error) {
	list, err := rdb.Do(ctx, "CLIENT", "LIST", "TYPE", "pubsub").Text()
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		for _, f := range strings.Fields(line) {
			if id, ok := strings.CutPrefix(f, "id="); ok {
				ids = append(ids, id)
			}
		}
	}
	return ids, nil
}

// TestShortHandlersUseAllWorkers: 4,000 events on distinct keys, a 1 ms
// handler and Workers: 4 are handled 4-way parallel, within 2.5 s of the
// last SET (one at a time they need over 4 s).
func TestShortHandlersUseAllWorkers(t *testing.T) {
	const n = 4000
	srv := redistest.Private(t, redistest.PrivateOptions{Args: []string{"--notify-keyspace-events", "K$"}})
	rdb := srv.Client()
	ctx := context.Background()
	var handled, running, peak, busy atomic.Int64
	done := make(chan struct{})
	startManager(t, rdb, Options{Flags: "K$", Config: ConfigSkip, Workers: 4}, func(m *Manager) {
		m.Handle("w:*", func(Event) {
			r := running.Add(1)
			for p := peak.Load(); r > p && !peak.CompareAndSwap(p, r); p = peak.Load() {
			}
			start := time.Now()
			time.Sleep(time.Millisecond)
			busy.Add(int64(time.Since(start)))
			running.Add(-1)
			if handled.Add(1) == n {
				close(done)
			}
		})
	})
	pipe := rdb.Pipeline()
	for i := 0; i < n; i++ {
		pipe.Set(ctx, "w:"+strconv.Itoa(i), "v", 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	last := time.Now()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("handled %d of %d events within 30 s", handled.Load(), n)
	}
	took := time.Since(last)
	serial := time.Duration(busy.Load()) // one at a time, the handlers would need this
	t.Logf("%d events with a 1 ms handler and 4 workers: handled %v after the last SET; handler calls took %v in all (%.1fx parallel); at most %d handlers at once",
		n, took.Round(time.Millisecond), serial.Round(time.Millisecond), float64(serial)/float64(took), peak.Load())
	// On a loaded machine a 1 ms sleep takes longer: the 2.5 s of the
	// issue hold where the calls take about 1 ms (4.4 s in all, 1.1 s in
	// parallel); the speed-up is required always.
	if serial < 5*time.Second && took > 2500*time.Millisecond {
		t.Errorf("handled %v after the last SET, want within 2.5 s (4-way parallel: about 1.1 s)", took.Round(time.Millisecond))
	}
	if float64(serial)/float64(took) < 2.5 {
		t.Errorf("handled %v after the last SET with %v of handler calls: %.1fx parallel, want at least 2.5x with 4 workers", took.Round(time.Millisecond), serial.Round(time.Millisecond), float64(serial)/float64(took))
	}
	if peak.Load() < 2 {
		t.Errorf("at most %d handler ran at once with 4 workers", peak.Load())
	}
}

// TestDropPolicyKeepsPace: 50,000 SETs/s for a burst, a 1 ms handler and a
// small queue with a drop policy: the reader keeps pace with Redis, so Redis
// never disconnects the subscriber (its pubsub output-buffer limit is the
// default, 32 MB hard / 8 MB for 60 s), the drops are counted, and a change
// made 1 s after the burst is handled within 1 s.
func TestDropPolicyKeepsPace(t *testing.T) {
	bursts := map[Overflow]time.Duration{OverflowDropNewest: 10 * time.Second, OverflowDropOldest: 4 * time.Second}
	for _, policy := range []Overflow{OverflowDropNewest, OverflowDropOldest} {
		t.Run(policy.String(), func(t *testing.T) {
			burst := bursts[policy]
			srv := redistest.Private(t, redistest.PrivateOptions{Args: []string{"--notify-keyspace-events", "K$"}})
			rdb := srv.Client()
			ctx := context.Background()
			errs := newErrSink()
			late := make(chan time.Time, 1)
			var gaps atomic.Int64
			m := startManager(t, rdb, Options{Flags: "K$", Config: ConfigSkip, QueueSize: 100, Overflow: policy,
				OnError: errs.report, OnGap: func() { gaps.Add(1) }}, func(m *Manager) {
				m.Handle("b:*", func(ev Event) {
					if ev.Key == "b:late" {
						late <- time.Now()
						return
					}
					time.Sleep(time.Millisecond)
				})
			})
			ids, err := pubsubClients(ctx, rdb)
			if err != nil || len(ids) != 1 {
				t.Fatalf("pubsub clients before: %v, %v", ids, err)
			}
			sent, err := rateProducer(ctx, srv.Addr, "b:", burstRate, burst)
			if err != nil {
				t.Fatal(err)
			}
			burstEnd := time.Now()
			// Keeping pace: the reader has read the whole burst soon after
			// it ended (a reader that falls behind is what makes Redis
			// disconnect it).
			for m.Stats().Received < uint64(sent) && time.Since(burstEnd) < 30*time.Second {
				time.Sleep(5 * time.Millisecond)
			}
			caughtUp := time.Since(burstEnd)
			time.Sleep(time.Until(burstEnd.Add(time.Second)))
			setAt := time.Now()
			if err := rdb.Set(ctx, "b:late", "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
			var after time.Duration
			select {
			case at := <-late:
				after = at.Sub(setAt)
			case <-time.After(20 * time.Second):
				after = -1
			}
			st := m.Stats()
			idsAfter, _ := pubsubClients(ctx, rdb)
			t.Logf("%s: sent %d SETs in %v; all read %v after the burst; Stats %+v; change after the burst handled %v after its SET; pubsub clients %v -> %v",
				policy, sent, burst, caughtUp.Round(time.Millisecond), st, after.Round(100*time.Microsecond), ids, idsAfter)
			if caughtUp > time.Second {
				t.Errorf("the reader read the last event of the burst %v after the burst ended, want within 1 s", caughtUp.Round(time.Millisecond))
			}
			if st.Reconnects != 0 || gaps.Load() != 0 || !equalStrings(ids, idsAfter) {
				t.Errorf("the subscriber was disconnected: %d reconnects, %d gaps, pubsub clients %v -> %v (errors %v)", st.Reconnects, gaps.Load(), ids, idsAfter, errs.errs)
			}
			if st.Dropped == 0 {
				t.Errorf("nothing dropped: the reader did not keep pace")
			}
			if st.Received+1 < uint64(sent) {
				t.Errorf("received %d of the %d events sent", st.Received, sent)
			}
			if after < 0 || after > time.Second {
				t.Errorf("the change 1 s after the burst was handled %v after its SET, want within 1 s", after.Round(time.Millisecond))
			}
		})
	}
}

// TestOverflowBlockGapSoonAfterDisconnect: with OverflowBlock and a 1 ms
// handler, a burst makes Redis disconnect the subscriber at its pubsub
// output-buffer limit (4 MB here); OnGap comes within 3 s of that
// disconnect, not once the events already in the socket are handled, and
// changes after it are handled.
func TestOverflowBlockGapSoonAfterDisconnect(t *testing.T) {
	srv := redistest.Private(t, redistest.PrivateOptions{Args: []string{
		"--notify-keyspace-events", "K$", "--client-output-buffer-limit", "pubsub 4mb 0 0"}})
	rdb := srv.Client()
	ctx := context.Background()
	gapAt := make(chan time.Time, 10)
	rec := newRecorder()
	m := startManager(t, rdb, Options{Flags: "K$", Config: ConfigSkip, QueueSize: 1000,
		OnGap: func() { gapAt <- time.Now() }}, func(m *Manager) {
		m.Handle("o:*", func(ev Event) {
			if ev.Key == "o:after" {
				rec.handle(ev)
				return
			}
			time.Sleep(time.Millisecond)
		})
	})
	ids, err := pubsubClients(ctx, rdb)
	if err != nil || len(ids) != 1 {
		t.Fatalf("pubsub clients before: %v, %v", ids, err)
	}
	// Produce until Redis disconnects the subscriber; note when.
	prodCtx, stopProducer := context.WithCancel(ctx)
	prodDone := make(chan struct{})
	go func() {
		defer close(prodDone)
		_, _ = rateProducer(prodCtx, srv.Addr, "o:", burstRate, 60*time.Second)
	}()
	defer func() { stopProducer(); <-prodDone }()
	var disconnectedAt time.Time
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		now, err := pubsubClients(ctx, rdb)
		if err == nil && (len(now) == 0 || now[0] != ids[0]) {
			disconnectedAt = time.Now()
			break
		}
	}
	stopProducer()
	<-prodDone
	if disconnectedAt.IsZero() {
		t.Fatalf("Redis did not disconnect the subscriber within 60 s (Stats %+v)", m.Stats())
	}
	var after time.Duration
	select {
	case at := <-gapAt:
		after = at.Sub(disconnectedAt)
	case <-time.After(60 * time.Second):
		t.Fatalf("no OnGap within 90 s of the disconnect (Stats %+v)", m.Stats())
	}
	t.Logf("OnGap %v after Redis disconnected the subscriber; Stats %+v", after.Round(time.Millisecond), m.Stats())
	if after > 3*time.Second {
		t.Errorf("OnGap %v after the disconnect, want within 3 s", after.Round(time.Millisecond))
	}
	rdb.Set(ctx, "o:after", "1", 0)
	rec.until(t, "o:after", EventSet)
}
