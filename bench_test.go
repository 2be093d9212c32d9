package redisleak_test

// Benchmarks of the core tracker. They run only with -bench; every setup is
// inside the Benchmark functions. bench/run.sh runs all of them the way the
// figures in bench/README.md were measured:
//
//	BenchmarkGET            GET throughput: plain go-redis, a no-op recorder
//	                        installed with redis.SetOTelRecorder (what go-redis
//	                        itself costs once any recorder is installed),
//	                        redisleak.Instrument, redisotel.InstrumentMetrics;
//	                        side by side on one Redis. Compare with
//	                        benchstat -col /client.
//	BenchmarkTracker10k     Scan and Stats over 10,000 tracked connections,
//	                        held (Client.Conn) and idle (in the pool).
//	BenchmarkMemoryPerConn  heap bytes per tracked connection attributable to
//	                        the tracker (instrumented minus plain, same
//	                        connections). Run with -benchtime 1x.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

const benchKey = "redisleak:bench:get"

// benchClient is one variant of BenchmarkGET: setup instruments a fresh
// client and returns what undoes it.
type benchClient struct {
	name  string
	setup func(b *testing.B, rdb *redis.Client) (check func(), undo func())
}

var benchClients = []benchClient{
	{"plain", func(b *testing.B, rdb *redis.Client) (func(), func()) {
		return func() {}, func() {}
	}},
	{"noop-recorder", func(b *testing.B, rdb *redis.Client) (func(), func()) {
		// What go-redis itself adds once any recorder with the connection
		// counter interface is installed: the floor under the tracker.
		redis.SetOTelRecorder(benchNoopRecorder{})
		return func() {}, func() { redis.SetOTelRecorder(nil) }
	}},
	{"noop-floor", func(b *testing.B, rdb *redis.Client) (func(), func()) {
		// The floor of any design on go-redis's public API that sees holds
		// and I/O: the no-op recorder, plus a hook and a net.Conn wrapper
		// that only pass through. The wrapper embeds the *net.TCPConn, as
		// the tracker's does, so that the deadlines and SyscallConn are
		// the connection's own; Read and Write pass through.
		redis.SetOTelRecorder(benchNoopRecorder{})
		rdb.AddHook(benchPassHook{})
		return func() {}, func() { redis.SetOTelRecorder(nil) }
	}},
	{"instrumented", instrumentedBench(redisleak.Options{})},
	{"instrumented-auto", instrumentedBench(redisleak.Options{AutoLongLived: true})},
	{"redisotel", func(b *testing.B, rdb *redis.Client) (func(), func()) {
		// A real SDK meter provider (measurements are aggregated, never
		// exported), as a user of redisotel has.
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		if err := redisotel.InstrumentMetrics(rdb, redisotel.WithMeterProvider(mp)); err != nil {
			b.Fatal(err)
		}
		return func() {}, func() { _ = mp.Shutdown(context.Background()) }
	}},
}

// instrumentedBench is the setup of a variant instrumented with opts.
func instrumentedBench(opts redisleak.Options) func(b *testing.B, rdb *redis.Client) (func(), func()) {
	return func(b *testing.B, rdb *redis.Client) (func(), func()) {
		tr, err := redisleak.Instrument(rdb, opts)
		if err != nil {
			b.Fatal(err)
		}
		check := func() {
			// the tracker really tracks the pool it is measured on
			s := tr.Stats()
			if s.ObserverMode != redisleak.ModeObserver || s.Total == 0 || s.Total != s.Idle+s.InUse {
				b.Fatalf("tracker does not see the pool: %+v", s)
			}
		}
		return check, func() { _ = tr.Close() }
	}
}

// BenchmarkGET measures GET against one real Redis (REDIS_ADDR, else a
// private redis-server) with b.RunParallel: run it with -cpu 1,8 for
// parallelism 1 and 8. Each sub-benchmark call makes its own client and
// undoes its instrumentation afterwards, so the plain client never runs with
// a tracker or a recorder installed.
func BenchmarkGET(b *testing.B) {
	addr := redistest.Addr(b)
	ctx := context.Background()
	seed := redis.NewClient(&redis.Options{Addr: addr})
	if err := seed.Set(ctx, benchKey, "0123456789abcdef", 0).Err(); err != nil {
		_ = seed.Close()
		b.Fatal(err)
	}
	_ = seed.Close()
	for _, bc := range benchClients {
		b.Run("client="+bc.name, func(b *testing.B) {
			rdb := redis.NewClient(&redis.Options{Addr: addr})
			check, undo := bc.setup(b, rdb)
			defer func() { _ = rdb.Close() }()
			defer undo()
			// warm the pool: one connection per parallel goroutine
			var wg sync.WaitGroup
			for range runtime.GOMAXPROCS(0) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 20 {
						if err := rdb.Get(ctx, benchKey).Err(); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			check()
			b.ReportAllocs()
			cpu0 := benchCPUTime()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := rdb.Get(ctx, benchKey).Err(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			// CPU time of the whole client process (all threads: GC and the
			// tracker's goroutines included) per op: less sensitive than
			// wall time to other load on a shared machine.
			b.ReportMetric(float64(benchCPUTime()-cpu0)/float64(b.N), "cpu-ns/op")
			check()
		})
	}
}

// benchCPUTime returns the process's user+system CPU time in nanoseconds.
func benchCPUTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// benchNoopRecorder implements redis.OTelRecorder and redis.OTelConnectionCounter
// and does nothing.
type benchNoopRecorder struct{}

var (
	_ redis.OTelRecorder          = benchNoopRecorder{}
	_ redis.OTelConnectionCounter = benchNoopRecorder{}
)

func (benchNoopRecorder) RecordOperationDuration(context.Context, time.Duration, redis.Cmder, int, error, redis.ConnInfo, int) {
}
func (benchNoopRecorder) RecordPipelineOperationDuration(context.Context, time.Duration, string, int, int, error, redis.ConnInfo, int) {
}
func (benchNoopRecorder) RecordConnectionCreateTime(context.Context, time.Duration, redis.ConnInfo) {}
func (benchNoopRecorder) RecordConnectionRelaxedTimeout(context.Context, int, redis.ConnInfo, string, string) {
}
func (benchNoopRecorder) RecordConnectionHandoff(context.Context, redis.ConnInfo, string)           {}
func (benchNoopRecorder) RecordError(context.Context, string, redis.ConnInfo, string, bool, int)    {}
func (benchNoopRecorder) RecordMaintenanceNotification(context.Context, redis.ConnInfo, string)     {}
func (benchNoopRecorder) RecordConnectionWaitTime(context.Context, time.Duration, redis.ConnInfo)   {}
func (benchNoopRecorder) RecordConnectionClosed(context.Context, redis.ConnInfo, string, error)     {}
func (benchNoopRecorder) RecordPubSubMessage(context.Context, redis.ConnInfo, string, string, bool) {}
func (benchNoopRecorder) RecordConnectionCount(context.Context, int, redis.ConnInfo, string, bool)  {}
func (benchNoopRecorder) RecordPendingRequests(context.Context, int, redis.ConnInfo, string)        {}
func (benchNoopRecorder) RecordStreamLag(context.Context, time.Duration, redis.ConnInfo, string, string, string) {
}

// benchPassHook is a redis.Hook that wraps dialed TCP connections in
// benchPassConn and otherwise only passes through.
type benchPassHook struct{}

func (benchPassHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &benchPassConn{TCPConn: c.(*net.TCPConn)}, nil
	}
}

func (benchPassHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { return next(ctx, cmd) }
}

func (benchPassHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// benchPassConn wraps a TCP connection and only passes through: Read and
// Write call it, the rest (deadlines, SyscallConn for go-redis's idle
// health check) is its own, promoted.
type benchPassConn struct {
	*net.TCPConn
}

func (c *benchPassConn) Read(b []byte) (int, error)  { return c.TCPConn.Read(b) }
func (c *benchPassConn) Write(b []byte) (int, error) { return c.TCPConn.Write(b) }

// benchManyConns is the number of connections of BenchmarkTracker10k and
// BenchmarkMemoryPerConn.
const benchManyConns = 10000

// benchRaiseFileLimit makes room for n more descriptors, or skips.
func benchRaiseFileLimit(b *testing.B, n uint64) {
	b.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Skipf("getrlimit: %v", err)
	}
	want := n + 512
	if lim.Cur >= want {
		return
	}
	if lim.Max < want {
		b.Skipf("open-file limit %d (hard) is below the %d this benchmark needs", lim.Max, want)
	}
	lim.Cur = want
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Skipf("setrlimit: %v", err)
	}
}

// benchManyServer starts a private redis-server that accepts benchManyConns clients.
func benchManyServer(b *testing.B) *redistest.Server {
	benchRaiseFileLimit(b, benchManyConns)
	return redistest.Private(b, redistest.PrivateOptions{Args: []string{"--maxclients", fmt.Sprint(benchManyConns + 2000)}})
}

// benchManyClient is a client whose pool can hold benchManyConns connections. Small
// buffers keep the benchmark's own memory down; they do not change what the
// tracker keeps per connection.
func benchManyClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:            addr,
		PoolSize:        benchManyConns,
		PoolTimeout:     time.Minute,
		ConnMaxIdleTime: -1,
		ReadBufferSize:  512,
		WriteBufferSize: 512,
	})
}

// benchHoldConns takes n connections out of rdb's pool with Client.Conn and a
// PING on each, 32 at a time, and returns them held.
func benchHoldConns(b *testing.B, rdb *redis.Client, n int) []*redis.Conn {
	b.Helper()
	ctx := context.Background()
	conns := make([]*redis.Conn, n)
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c := rdb.Conn()
				if err := c.Ping(ctx).Err(); err != nil {
					_ = c.Close()
					failed.Store(err)
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
		b.Fatalf("opening %d connections: %v", n, err)
	}
	return conns
}

func benchReleaseConns(conns []*redis.Conn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

var benchLeaks int

// BenchmarkTracker10k times Tracker.Scan and Tracker.Stats over 10,000
// tracked connections of one client, first all held (Client.Conn, each
// after a PING: the heaviest state, every record evaluated) and then all
// idle in the pool. MaxHold is an hour, so nothing is a leak: this is the
// steady-state cost of the background scan and of a health endpoint.
func BenchmarkTracker10k(b *testing.B) {
	srv := benchManyServer(b)
	rdb := benchManyClient(srv.Addr)
	defer func() { _ = rdb.Close() }()
	tr, err := redisleak.Instrument(rdb, redisleak.Options{
		MaxHold:      time.Hour,
		ScanInterval: time.Hour,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = tr.Close() }()
	conns := benchHoldConns(b, rdb, benchManyConns)
	released := false
	defer func() {
		if !released {
			benchReleaseConns(conns)
		}
	}()

	run := func(state string, wantInUse int) {
		s := tr.Stats()
		if s.Total < benchManyConns || s.InUse != wantInUse || s.Leaked != 0 {
			b.Fatalf("%s: want %d tracked connections, %d in use, no leaks; have %+v", state, benchManyConns, wantInUse, s)
		}
		b.Run("state="+state+"/op=Scan", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				benchLeaks += len(tr.Scan())
			}
			b.ReportMetric(float64(s.Total), "conns")
		})
		b.Run("state="+state+"/op=Stats", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				benchLeaks += tr.Stats().Leaked
			}
			b.ReportMetric(float64(s.Total), "conns")
		})
	}
	run("held", benchManyConns)
	benchReleaseConns(conns)
	released = true
	run("idle", 0)
	if benchLeaks != 0 {
		b.Fatalf("%d leaks reported", benchLeaks)
	}
}

// benchHeapAlloc returns the live heap after a full collection.
func benchHeapAlloc() uint64 {
	var ms runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkMemoryPerConn measures the heap the tracker adds per connection:
// the same 10,000 connections are opened by a plain client and by an
// instrumented one (each a PING on a Client.Conn); the heap growth of the
// plain client is subtracted from that of the instrumented one. The tracker
// is created before the first reading, so its fixed cost (the hold-time
// histograms) is not counted. Reported: B/conn while the connections are
// held (Client.Conn open) and after they returned to the pool (idle). It is
// a measurement, not a loop: run it with -benchtime 1x.
func BenchmarkMemoryPerConn(b *testing.B) {
	srv := benchManyServer(b)
	measure := func(instrument bool) (held, idle float64) {
		rdb := benchManyClient(srv.Addr)
		defer func() { _ = rdb.Close() }()
		if instrument {
			tr, err := redisleak.Instrument(rdb, redisleak.Options{
				MaxHold:      time.Hour,
				ScanInterval: time.Hour,
				Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = tr.Close() }()
			// one Stats call before the first reading, so that whatever it
			// allocates once is not counted
			_ = tr.Stats()
		}
		before := benchHeapAlloc()
		conns := benchHoldConns(b, rdb, benchManyConns)
		held = float64(benchHeapAlloc()) - float64(before)
		benchReleaseConns(conns)
		conns = nil
		idle = float64(benchHeapAlloc()) - float64(before)
		if st := rdb.PoolStats(); st.TotalConns < benchManyConns {
			b.Fatalf("pool has %d connections, want %d", st.TotalConns, benchManyConns)
		}
		return held / benchManyConns, idle / benchManyConns
	}
	for range b.N {
		plainHeld, plainIdle := measure(false)
		instrHeld, instrIdle := measure(true)
		b.ReportMetric(instrHeld-plainHeld, "B/conn-held")
		b.ReportMetric(instrIdle-plainIdle, "B/conn-idle")
		b.ReportMetric(plainIdle, "B/conn-plain-idle")
	}
}
