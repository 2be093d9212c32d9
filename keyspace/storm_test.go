package keyspace

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
)

// storm SETs n watched keys (prefix storm:) in pipelines of 1000.
func storm(ctx context.Context, c *redis.Client, n int) error {
	const batch = 1000
	for i := 0; i < n; i += batch {
		pipe := c.Pipeline()
		for j := i; j < i+batch && j < n; j++ {
			pipe.Set(ctx, "storm:"+strconv.Itoa(j), "v", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
	}
	return nil
}

// bareStorm measures a plain go-redis PSubscribe loop: read and count.
func bareStorm(ctx context.Context, sub, prod *redis.Client, n int) (time.Duration, error) {
	ps := sub.PSubscribe(ctx, "__keyspace@0__:storm:*")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil { // the confirmation
		return 0, err
	}
	errc := make(chan error, 1)
	start := time.Now()
	go func() { errc <- storm(ctx, prod, n) }()
	for got := 0; got < n; got++ {
		if _, err := ps.ReceiveMessage(ctx); err != nil {
			return 0, err
		}
	}
	d := time.Since(start)
	return d, <-errc
}

// managerStorm measures the same storm through a Manager whose handler counts.
func managerStorm(ctx context.Context, sub, prod *redis.Client, n int, opts Options) (time.Duration, Stats, error) {
	m, err := NewManager(sub, opts)
	if err != nil {
		return 0, Stats{}, err
	}
	var got atomic.Int64
	done := make(chan struct{})
	m.Handle("storm:*", func(Event) {
		if got.Add(1) == int64(n) {
			close(done)
		}
	})
	if err := m.Start(ctx); err != nil {
		return 0, Stats{}, err
	}
	defer m.Close(ctx)
	errc := make(chan error, 1)
	start := time.Now()
	go func() { errc <- storm(ctx, prod, n) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		return 0, m.Stats(), fmt.Errorf("manager handled %d of %d events", got.Load(), n)
	}
	d := time.Since(start)
	return d, m.Stats(), <-errc
}

// BenchmarkEventStorm sends a storm of SETs on watched keys (100,000 by
// default; KEYSPACE_STORM=n to change) through a bare go-redis PSubscribe
// loop and through a Manager, alternately on the same private Redis, and
// reports both dispatch rates, their ratio and the events lost. One
// iteration is one storm of each; run with -benchtime=3x for three rounds.
func BenchmarkEventStorm(b *testing.B) {
	n := 100000
	if s := os.Getenv("KEYSPACE_STORM"); s != "" {
		if v, err := strconv.Atoi(s); err == nil && v > 0 {
			n = v
		}
	}
	srv := redistest.Private(b, redistest.PrivateOptions{Args: []string{"--notify-keyspace-events", "K$"}})
	sub, prod := srv.Client(), srv.Client()
	ctx := context.Background()
	var bare, mgr time.Duration
	var lost uint64
	ratios := make([]float64, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Alternate the order, and compare within a round: the CPU is shared.
		var db, dm time.Duration
		for _, managerFirst := range []bool{i%2 == 1, i%2 == 0} {
			if managerFirst {
				d, st, err := managerStorm(ctx, sub, prod, n, Options{Flags: "K$", Config: ConfigSkip})
				if err != nil {
					b.Fatal(err)
				}
				dm = d
				lost += st.Dropped + (uint64(n) - st.Received)
			} else {
				d, err := bareStorm(ctx, sub, prod, n)
				if err != nil {
					b.Fatal(err)
				}
				db = d
			}
		}
		bare += db
		mgr += dm
		ratios = append(ratios, db.Seconds()/dm.Seconds())
	}
	b.StopTimer()
	sort.Float64s(ratios)
	total := float64(n * b.N)
	bareRate, mgrRate := total/bare.Seconds(), total/mgr.Seconds()
	b.ReportMetric(bareRate, "bare-events/s")
	b.ReportMetric(mgrRate, "manager-events/s")
	b.ReportMetric(mgrRate/bareRate, "ratio")
	b.ReportMetric(ratios[len(ratios)/2], "median-ratio")
	b.ReportMetric(float64(lost), "lost")
	b.ReportMetric(0, "ns/op")
}

// TestStormNoLossBelowQueueCapacity: with OverflowDropNewest and handlers
// stalled for the whole storm, every event of a storm that fits in the
// queue is kept and handled; the first one beyond capacity is dropped and
// counted.
func TestStormNoLossBelowQueueCapacity(t *testing.T) {
	const n = 20000
	srv := redistest.Private(t, redistest.PrivateOptions{Args: []string{"--notify-keyspace-events", "K$"}})
	rdb := srv.Client()
	ctx := context.Background()
	gate := make(chan struct{})
	var handled atomic.Int64
	m := startManager(t, rdb, Options{Flags: "K$", Config: ConfigSkip, QueueSize: n, Overflow: OverflowDropNewest}, func(m *Manager) {
		m.Handle("storm:*", func(Event) { <-gate; handled.Add(1) })
	})
	// The first event occupies the handler, the queue holds n; one more is
	// dropped.
	if err := storm(ctx, rdb, n+2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the storm to be received", func() bool { return m.Stats().Received == n+2 })
	if s := m.Stats(); s.Dropped != 1 || s.Queued != n {
		t.Fatalf("Stats = %+v, want Dropped 1 and Queued %d", s, n)
	}
	close(gate)
	waitFor(t, "the queue to drain", func() bool { return handled.Load() == n+1 })
	if s := m.Stats(); s.Handled != n+1 || s.Dropped != 1 {
		t.Fatalf("Stats = %+v", s)
	}
}
