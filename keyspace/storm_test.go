package keyspace

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"sync/atomic"
	"syscall"
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

// producer sends n SETs on keys matching storm:*.
type producer func(ctx context.Context, n int) error

// externalProducer runs redis-benchmark (one connection, pipelines of 100)
// so that the test process's CPU time is the consumer's alone.
func externalProducer(port int) producer {
	return func(ctx context.Context, n int) error {
		out, err := exec.CommandContext(ctx, "redis-benchmark", "-h", "127.0.0.1", "-p", strconv.Itoa(port),
			"-t", "set", "-n", strconv.Itoa(n), "-r", "1000000", "-P", "100", "-c", "1", "-q",
			"SET", "storm:__rand_int__", "v").CombinedOutput()
		if err != nil {
			return fmt.Errorf("redis-benchmark: %v: %s", err, out)
		}
		return nil
	}
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measured is one storm's wall time and the process's CPU time during it.
type measured struct{ wall, cpu time.Duration }

// stormSetup says how a storm is sent.
//
// Live: the producer runs while the consumer reads; the storm lasts as long
// as the slower of the two, and a consumer that keeps up is measured at the
// producer's rate.
//
// Backlog (proxy set): the subscriber reads through a loopback proxy that
// holds the replies back while the producer sends the whole storm; the
// clock starts when the proxy lets the held-back events through, so the
// consumer works through them as fast as it can: its dispatch rate. The
// server must not limit the subscriber's output buffer.
type stormSetup struct {
	produce producer
	proxy   *redistest.Proxy // backlog mode when set
}

// send starts the storm and the clock: in backlog mode, after the whole
// storm is produced (and held back by the proxy). It returns when the clock
// starts; errc gets the producer's result.
func (s stormSetup) send(ctx context.Context, n int) (start time.Time, cpu time.Duration, errc chan error) {
	errc = make(chan error, 1)
	if s.proxy == nil {
		start, cpu = time.Now(), cpuTime()
		go func() { errc <- s.produce(ctx, n) }()
		return start, cpu, errc
	}
	s.proxy.Stall(true)
	errc <- s.produce(ctx, n)
	start, cpu = time.Now(), cpuTime()
	s.proxy.Stall(false)
	return start, cpu, errc
}

// bareStorm measures a plain go-redis PSubscribe loop: read and count.
func bareStorm(ctx context.Context, sub *redis.Client, setup stormSetup, n int) (measured, error) {
	ps := sub.PSubscribe(ctx, "__keyspace@0__:storm:*")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil { // the confirmation
		return measured{}, err
	}
	start, cpu, errc := setup.send(ctx, n)
	for got := 0; got < n; got++ {
		if _, err := ps.ReceiveMessage(ctx); err != nil {
			return measured{}, err
		}
	}
	r := measured{time.Since(start), cpuTime() - cpu}
	return r, <-errc
}

// managerStorm measures the same storm through a Manager whose handler counts.
func managerStorm(ctx context.Context, sub *redis.Client, setup stormSetup, n int, opts Options) (measured, Stats, error) {
	m, err := NewManager(sub, opts)
	if err != nil {
		return measured{}, Stats{}, err
	}
	var got atomic.Int64
	done := make(chan struct{})
	m.Handle("storm:*", func(Event) {
		if got.Add(1) == int64(n) {
			close(done)
		}
	})
	if err := m.Start(ctx); err != nil {
		return measured{}, Stats{}, err
	}
	defer m.Close(ctx)
	start, cpu, errc := setup.send(ctx, n)
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		return measured{}, m.Stats(), fmt.Errorf("manager handled %d of %d events", got.Load(), n)
	}
	r := measured{time.Since(start), cpuTime() - cpu}
	return r, m.Stats(), <-errc
}

// BenchmarkEventStorm sends a storm of SETs on watched keys (100,000 by
// default; KEYSPACE_STORM=n to change) through a bare go-redis PSubscribe
// loop and through a Manager, alternately on the same private Redis, and
// reports per variant the dispatch rate (events per wall-clock second) and
// the events per CPU-second of this process, their ratios (variant/bare:
// overall and the median of the per-round ratios) and the events lost.
//
// Sub-benchmarks: backlog measures the dispatch rate proper: the storm is
// produced while a loopback proxy holds it back, then released, and the
// consumer works through it as fast as it can (the proxy's copying, a few
// large writes, is in both variants' figures). live sends the storm while
// the consumer reads, as in production; a consumer that keeps up is
// measured at the producer's rate.
//
// The producer is redis-benchmark in its own process when installed (so
// CPU time is the consumer's), else an in-process pipeline. Variants: bare,
// manager (default options) and inline (Options.Inline). One iteration is
// one storm of each, in rotating order; the CPU is shared, so compare
// within a run: -benchtime=8x. KEYSPACE_ONLY=<variant> runs one variant
// (for profiles).
func BenchmarkEventStorm(b *testing.B) {
	n := 100000
	if s := os.Getenv("KEYSPACE_STORM"); s != "" {
		if v, err := strconv.Atoi(s); err == nil && v > 0 {
			n = v
		}
	}
	srv := redistest.Private(b, redistest.PrivateOptions{Args: []string{
		"--notify-keyspace-events", "K$",
		"--client-output-buffer-limit", "pubsub 0 0 0", // the backlog is held in Redis
	}})
	prod := srv.Client()
	produce := producer(func(ctx context.Context, n int) error { return storm(ctx, prod, n) })
	if _, err := exec.LookPath("redis-benchmark"); err == nil {
		produce = externalProducer(srv.Port)
	} else {
		b.Log("redis-benchmark not found: in-process producer, CPU figures include it")
	}
	b.Run("backlog", func(b *testing.B) {
		proxy := redistest.NewProxy(b, srv.Addr)
		sub := srv.Client(func(o *redis.Options) { o.Addr = proxy.Addr })
		runStorms(b, sub, stormSetup{produce: produce, proxy: proxy}, n)
	})
	b.Run("live", func(b *testing.B) {
		runStorms(b, srv.Client(), stormSetup{produce: produce}, n)
	})
}

func runStorms(b *testing.B, sub *redis.Client, setup stormSetup, n int) {
	ctx := context.Background()
	variants := []struct {
		name string
		opts *Options // nil: the bare loop
	}{
		{"bare", nil},
		{"manager", &Options{Flags: "K$", Config: ConfigSkip}},
		{"inline", &Options{Flags: "K$", Config: ConfigSkip, Inline: true}},
	}
	sums := make([]measured, len(variants))
	ratios := make([][]float64, len(variants))
	var lost uint64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Rotate the order, and compare within a round: the CPU is shared.
		round := make([]measured, len(variants))
		for j := range variants {
			k := (i + j) % len(variants)
			v := variants[k]
			if only := os.Getenv("KEYSPACE_ONLY"); only != "" && only != v.name {
				continue
			}
			var r measured
			var err error
			if v.opts == nil {
				r, err = bareStorm(ctx, sub, setup, n)
			} else {
				var st Stats
				r, st, err = managerStorm(ctx, sub, setup, n, *v.opts)
				lost += st.Dropped + (uint64(n) - st.Received)
			}
			if err != nil {
				b.Fatal(err)
			}
			round[k] = r
			sums[k].wall += r.wall
			sums[k].cpu += r.cpu
		}
		for k := 1; k < len(variants); k++ {
			if round[0].wall > 0 && round[k].wall > 0 {
				ratios[k] = append(ratios[k], round[0].wall.Seconds()/round[k].wall.Seconds())
			}
		}
	}
	b.StopTimer()
	total := float64(n * b.N)
	for k, v := range variants {
		if sums[k].wall == 0 {
			continue
		}
		b.ReportMetric(total/sums[k].wall.Seconds(), v.name+"-events/s")
		b.ReportMetric(total/sums[k].cpu.Seconds(), v.name+"-events/cpu-s")
		if k > 0 && sums[0].wall > 0 {
			b.ReportMetric(sums[0].wall.Seconds()/sums[k].wall.Seconds(), v.name+"-ratio")
			b.ReportMetric(sums[0].cpu.Seconds()/sums[k].cpu.Seconds(), v.name+"-cpu-ratio")
			sort.Float64s(ratios[k])
			b.ReportMetric(ratios[k][len(ratios[k])/2], v.name+"-median-ratio")
		}
	}
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
