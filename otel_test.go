package redisleak_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

// One client instrumented with the tracker and with redisotel's tracing and
// metrics: all three work.
func TestWithRedisotel(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(bg)
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(bg)

	if err := redisotel.InstrumentTracing(rdb, redisotel.WithTracerProvider(tp)); err != nil {
		t.Fatal(err)
	}
	if err := redisotel.InstrumentMetrics(rdb, redisotel.WithMeterProvider(mp)); err != nil {
		t.Fatal(err)
	}
	tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 100 * time.Millisecond, ScanInterval: time.Hour, MeterProvider: mp})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()

	for i := 0; i < 20; i++ {
		if err := rdb.Set(bg, "k", i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	c := leakyConn(bg, rdb)
	defer c.Close()
	if n := len(scanUntil(t, tr, 1)); n != 1 {
		t.Fatal(n)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	names := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			names[m.Name] = m.Data
		}
	}
	for _, want := range []string{"redisleak.connections.in_use", "redisleak.connections.idle", "redisleak.connections.long_lived", "redisleak.connections.leaked", "redisleak.connection.hold.duration", "redisleak.leaks"} {
		if _, ok := names[want]; !ok {
			t.Errorf("tracker metric %s missing; have %v", want, keys(names))
		}
	}
	if _, ok := names["db.client.connections.use_time"]; !ok {
		t.Errorf("redisotel metric db.client.connections.use_time missing; have %v", keys(names))
	}
	if h, ok := names["redisleak.connection.hold.duration"].(metricdata.Histogram[float64]); !ok || len(h.DataPoints) == 0 || h.DataPoints[0].Count == 0 {
		t.Errorf("hold-time histogram empty: %#v", names["redisleak.connection.hold.duration"])
	}
	if s, ok := names["redisleak.leaks"].(metricdata.Sum[int64]); !ok || len(s.DataPoints) == 0 || s.DataPoints[0].Value != 1 {
		t.Errorf("leaks counter: %#v", names["redisleak.leaks"])
	}
	if g, ok := names["redisleak.connections.leaked"].(metricdata.Gauge[int64]); !ok || len(g.DataPoints) == 0 || g.DataPoints[0].Value != 1 {
		t.Errorf("leaked gauge: %#v", names["redisleak.connections.leaked"])
	}
	if len(spans.Ended()) < 20 {
		t.Errorf("redisotel tracing recorded %d spans", len(spans.Ended()))
	}
}

func keys(m map[string]metricdata.Aggregation) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// countingRecorder is a user recorder chained through Options.ChainRecorder.
type countingRecorder struct {
	noopRecorder
	waits chan struct{}
}

func (r *countingRecorder) RecordConnectionWaitTime(context.Context, time.Duration, redis.ConnInfo) {
	select {
	case r.waits <- struct{}{}:
	default:
	}
}

func TestChainRecorderAndReplacement(t *testing.T) {
	t.Cleanup(func() { redis.SetOTelRecorder(nil) }) // runs after the tracker's Close
	srv := redistest.Private(t)
	proxy := redistest.NewProxy(t, srv.Addr)
	rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr, ReadTimeout: -1, MaxRetries: -1, MaintNotificationsConfig: redistest.NoMaintNotifications()})
	defer rdb.Close()
	logs := &logBuffer{}
	chained := &countingRecorder{waits: make(chan struct{}, 1)}
	tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 100 * time.Millisecond, ScanInterval: 30 * time.Millisecond, Logger: logs.logger(), ChainRecorder: chained})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	rdb.Ping(bg)
	select {
	case <-chained.waits:
	case <-time.After(2 * time.Second):
		t.Fatal("chained recorder got no events")
	}
	// Another tracker with a different chained recorder is contradictory.
	if tr2, err := redisleak.Instrument(srv.Client(), redisleak.Options{ChainRecorder: &countingRecorder{}}); err == nil {
		tr2.Close()
		t.Fatal("conflicting ChainRecorder accepted")
	}

	// Something else replaces the process-wide recorder: the tracker notices.
	redis.SetOTelRecorder(noopRecorder{})
	redistest.WaitFor(t, 3*time.Second, "fallback to hooks mode", func() bool {
		rdb.Ping(bg)
		return tr.Stats().ObserverMode == redisleak.ModeHooks
	})
	if !waitLog(logs, "falling back to hooks") {
		t.Fatalf("no warning: %s", logs)
	}
	s := tr.Stats()
	if s.Total != s.Idle+s.InUse {
		t.Fatalf("stats %+v", s)
	}
	// In hooks mode a stuck command is still found, with its site.
	proxy.Stall(true)
	done := make(chan error, 1)
	go func() { done <- stuckGet(bg, rdb) }()
	var leaks []redisleak.Leak
	redistest.WaitFor(t, 3*time.Second, "stuck command in hooks mode", func() bool {
		leaks = tr.Scan()
		return len(leaks) == 1
	})
	assertSite(t, leaks[0], "stuckGet")
	proxy.Stall(false)
	<-done
}

func waitLog(l *logBuffer, s string) bool {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if contains(l.String(), s) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// noopRecorder implements redis.OTelRecorder doing nothing.
type noopRecorder struct{}

func (noopRecorder) RecordOperationDuration(context.Context, time.Duration, redis.Cmder, int, error, redis.ConnInfo, int) {
}
func (noopRecorder) RecordPipelineOperationDuration(context.Context, time.Duration, string, int, int, error, redis.ConnInfo, int) {
}
func (noopRecorder) RecordConnectionCreateTime(context.Context, time.Duration, redis.ConnInfo) {}
func (noopRecorder) RecordConnectionRelaxedTimeout(context.Context, int, redis.ConnInfo, string, string) {
}
func (noopRecorder) RecordConnectionHandoff(context.Context, redis.ConnInfo, string)           {}
func (noopRecorder) RecordError(context.Context, string, redis.ConnInfo, string, bool, int)    {}
func (noopRecorder) RecordMaintenanceNotification(context.Context, redis.ConnInfo, string)     {}
func (noopRecorder) RecordConnectionWaitTime(context.Context, time.Duration, redis.ConnInfo)   {}
func (noopRecorder) RecordConnectionClosed(context.Context, redis.ConnInfo, string, error)     {}
func (noopRecorder) RecordPubSubMessage(context.Context, redis.ConnInfo, string, string, bool) {}
func (noopRecorder) RecordStreamLag(context.Context, time.Duration, redis.ConnInfo, string, string, string) {
}

// registrarRecorder is a chained recorder that also registers pools (as
// go-redis's native OTel recorder does).
type registrarRecorder struct {
	noopRecorder
	mu    sync.Mutex
	pools []string
}

func (r *registrarRecorder) RegisterPool(name string, _ redis.Pooler) {
	r.mu.Lock()
	r.pools = append(r.pools, name)
	r.mu.Unlock()
}
func (r *registrarRecorder) UnregisterPool(redis.Pooler)                   {}
func (r *registrarRecorder) RegisterPubSubPool(string, redis.PubSubPooler) {}
func (r *registrarRecorder) UnregisterPubSubPool(redis.PubSubPooler)       {}

func TestChainRecorderPoolRegistration(t *testing.T) {
	t.Cleanup(func() { redis.SetOTelRecorder(nil) })
	srv := redistest.Private(t)
	chained := &registrarRecorder{}
	tr, err := redisleak.Instrument(srv.Client(), redisleak.Options{ScanInterval: time.Hour, ChainRecorder: chained})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := srv.Client() // created while the dispatcher is installed
	c.Ping(bg)
	chained.mu.Lock()
	defer chained.mu.Unlock()
	if len(chained.pools) == 0 {
		t.Fatal("the chained recorder was not told about the new client's pool")
	}
}
