package redisleak_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

// collect returns the data points of the named int64 gauge and the
// hold-time histogram's points.
func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string][]attribute.Set {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string][]attribute.Set{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					out[m.Name] = append(out[m.Name], p.Attributes)
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					out[m.Name] = append(out[m.Name], p.Attributes)
				}
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					out[m.Name] = append(out[m.Name], p.Attributes)
				}
			}
		}
	}
	return out
}

func attr(s attribute.Set, k string) string {
	v, _ := s.Value(attribute.Key(k))
	return v.Emit()
}

// Two clients of the same server, instrumented on one MeterProvider: two
// series, told apart by redisleak.client (derived names, then given ones),
// and per-pool gauges labelled with the pool's name.
func TestMetricsOfTwoClientsStayApart(t *testing.T) {
	srv := redistest.Private(t)
	for _, given := range [][2]string{{"", ""}, {"orders", "sessions"}} {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		var trs []*redisleak.Tracker
		var clients []*redis.Client
		for _, name := range given {
			rdb := srv.Client()
			clients = append(clients, rdb)
			tr, err := redisleak.Instrument(rdb, redisleak.Options{ScanInterval: time.Hour, MeterProvider: mp, Name: name})
			if err != nil {
				t.Fatal(err)
			}
			trs = append(trs, tr)
			if err := rdb.Ping(bg).Err(); err != nil {
				t.Fatal(err)
			}
		}
		// one held connection on the second client only
		c := clients[1].Conn()
		if err := c.Ping(bg).Err(); err != nil {
			t.Fatal(err)
		}
		got := collect(t, reader)

		want := map[string]bool{trs[0].Name(): true, trs[1].Name(): true}
		if len(want) != 2 {
			t.Fatalf("names %q and %q are not distinct", trs[0].Name(), trs[1].Name())
		}
		if given[0] != "" && (trs[0].Name() != given[0] || trs[1].Name() != given[1]) {
			t.Fatalf("names %q, %q; want the given ones", trs[0].Name(), trs[1].Name())
		}
		if given[0] == "" && (trs[0].Name() != srv.Addr || trs[1].Name() != srv.Addr+"#2") {
			t.Fatalf("derived names %q, %q; want %q and %q#2", trs[0].Name(), trs[1].Name(), srv.Addr, srv.Addr)
		}
		for _, metric := range []string{"redisleak.connections.in_use", "redisleak.connections.idle", "redisleak.connections.long_lived", "redisleak.connections.leaked"} {
			seen := map[string]bool{}
			for _, s := range got[metric] {
				seen[attr(s, "redisleak.client")] = true
				if attr(s, "db.client.connection.pool.name") != "" {
					t.Errorf("%s: client total with a pool attribute: %v", metric, s)
				}
			}
			if len(got[metric]) != 2 || !seen[trs[0].Name()] || !seen[trs[1].Name()] {
				t.Errorf("%s: points %v, want one per client %v", metric, got[metric], want)
			}
		}
		for _, s := range got["redisleak.connection.hold.duration"] {
			if !want[attr(s, "redisleak.client")] {
				t.Errorf("hold-time point without the client: %v", s)
			}
		}
		if len(got["redisleak.connection.hold.duration"]) < 2 {
			t.Errorf("hold-time points %v, want some of each client", got["redisleak.connection.hold.duration"])
		}
		// per pool: each client's main pool, with its go-redis name
		pools := map[string]string{}
		for _, s := range got["redisleak.pool.connections.in_use"] {
			pools[attr(s, "redisleak.client")+" "+attr(s, "db.client.connection.pool.name")] = attr(s, "server.address")
		}
		for i, tr := range trs {
			ps := tr.Stats().Pools
			if len(ps) == 0 {
				t.Fatalf("client %d: no pools in Stats", i)
			}
			for _, p := range ps {
				if a, ok := pools[tr.Name()+" "+p.Name]; !ok || a != p.Addr {
					t.Errorf("pool gauge for %s %s missing (have %v)", tr.Name(), p.Name, pools)
				}
			}
		}
		c.Close()
		for _, tr := range trs {
			tr.Close()
		}
		for _, rdb := range clients {
			rdb.Close()
		}
		mp.Shutdown(bg)
	}
}
