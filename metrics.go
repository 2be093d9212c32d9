package redisleak

import (
	"context"
	"sort"
	"strconv"
	"sync"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Names of the tracker's instruments, documented in the package doc
// (Metrics): dashboards and alerts use them, so they do not change.
const (
	metricInUse     = "redisleak.connections.in_use"
	metricIdle      = "redisleak.connections.idle"
	metricLongLived = "redisleak.connections.long_lived"
	metricLeaked    = "redisleak.connections.leaked"
	metricHoldTime  = "redisleak.connection.hold.duration"
	metricLeaks     = "redisleak.leaks"

	metricPoolInUse     = "redisleak.pool.connections.in_use"
	metricPoolIdle      = "redisleak.pool.connections.idle"
	metricPoolLongLived = "redisleak.pool.connections.long_lived"
	metricPoolLeaked    = "redisleak.pool.connections.leaked"
)

// Attribute keys of the tracker's metrics (package doc, Metrics).
const (
	// attrClient names the tracker (Tracker.Name) on every data point.
	attrClient = "redisleak.client"
	// attrPoolName names the go-redis pool on the pool gauges' points.
	attrPoolName = "db.client.connection.pool.name"
)

const meterName = "github.com/redisleak/redisleak"

type trackerMetrics struct {
	name      string // the tracker's name (redisleak.client)
	reg       metric.Registration
	holdHist  metric.Float64Histogram
	leaks     metric.Int64Counter
	kindAttrs [numKinds]metric.MeasurementOption
	kindRec   [numKinds][]metric.RecordOption // built once: no allocation per Record
	base      attribute.KeyValue
}

func newTrackerMetrics(t *Tracker, mp metric.MeterProvider) (*trackerMetrics, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(meterName)
	m := &trackerMetrics{base: attribute.String("redis.client.kind", string(t.clientKind))}
	m.name = names.acquire(t.opts.Name, t.client)
	ok := false
	defer func() {
		if !ok {
			names.release(m.name)
		}
	}()
	client := attribute.String(attrClient, m.name)
	var err error
	var gauges [8]metric.Int64ObservableGauge
	for i, g := range []struct{ name, desc string }{
		{metricInUse, "Connections held out of the pool, long-lived ones included; the client's total over its pools."},
		{metricIdle, "Idle connections in the pool; the client's total over its pools."},
		{metricLongLived, "Held connections that are long-lived by mark or by nature; the client's total over its pools."},
		{metricLeaked, "Held connections over their threshold and not long-lived; the client's total over its pools."},
		{metricPoolInUse, "Connections held out of the pool, long-lived ones included; one point per go-redis pool (" + attrPoolName + "), which sum to " + metricInUse + "."},
		{metricPoolIdle, "Idle connections in the pool; one point per go-redis pool (" + attrPoolName + "), which sum to " + metricIdle + "."},
		{metricPoolLongLived, "Held connections that are long-lived by mark or by nature; one point per go-redis pool (" + attrPoolName + "), which sum to " + metricLongLived + "."},
		{metricPoolLeaked, "Held connections over their threshold and not long-lived; one point per go-redis pool (" + attrPoolName + "), which sum to " + metricLeaked + "."},
	} {
		gauges[i], err = meter.Int64ObservableGauge(g.name, metric.WithDescription(g.desc), metric.WithUnit("{connection}"))
		if err != nil {
			return nil, err
		}
	}
	inUse, idle, longLived, leaked := gauges[0], gauges[1], gauges[2], gauges[3]
	pInUse, pIdle, pLongLived, pLeaked := gauges[4], gauges[5], gauges[6], gauges[7]
	m.holdHist, err = meter.Float64Histogram(metricHoldTime, metric.WithDescription("How long a connection was held out of the pool, per hold."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
	if err != nil {
		return nil, err
	}
	m.leaks, err = meter.Int64Counter(metricLeaks, metric.WithDescription("Leaks detected (each reported once)."), metric.WithUnit("{leak}"))
	if err != nil {
		return nil, err
	}
	for i, k := range kindNames {
		m.kindAttrs[i] = metric.WithAttributes(client, m.base, attribute.String("kind", string(k)))
		m.kindRec[i] = []metric.RecordOption{m.kindAttrs[i]}
	}
	attrs := metric.WithAttributes(client, m.base)
	var poolMu sync.Mutex
	poolAttrs := map[string]metric.ObserveOption{} // by pool name, built once
	m.reg, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		// The holds that ended since the last collection go to the
		// hold-time histogram now: readers run callbacks before they
		// collect, so they are part of this collection. Nothing runs
		// between collections, and nothing at all without a reader.
		t.holds.flush(m)
		s := t.Stats()
		poolMu.Lock()
		defer poolMu.Unlock()
		o.ObserveInt64(inUse, int64(s.InUse), attrs)
		o.ObserveInt64(idle, int64(s.Idle), attrs)
		o.ObserveInt64(longLived, int64(s.LongLived), attrs)
		o.ObserveInt64(leaked, int64(s.Leaked), attrs)
		for _, p := range s.Pools {
			pa, ok := poolAttrs[p.Name]
			if !ok {
				pa = metric.WithAttributes(client, m.base, attribute.String(attrPoolName, p.Name), attribute.String("server.address", p.Addr))
				poolAttrs[p.Name] = pa
			}
			o.ObserveInt64(pInUse, int64(p.InUse), pa)
			o.ObserveInt64(pIdle, int64(p.Idle), pa)
			o.ObserveInt64(pLongLived, int64(p.LongLived), pa)
			o.ObserveInt64(pLeaked, int64(p.Leaked), pa)
		}
		return nil
	}, inUse, idle, longLived, leaked, pInUse, pIdle, pLongLived, pLeaked)
	if err != nil {
		return nil, err
	}
	ok = true
	return m, nil
}

// Name returns the tracker's name: Options.Name, or the name derived from
// the client when that is empty (see Options.Name). It is the value of the
// redisleak.client attribute on the tracker's metrics.
func (t *Tracker) Name() string {
	if t.metrics == nil {
		return t.opts.Name
	}
	return t.metrics.name
}

// names hands out tracker names. A derived name already used by a live
// tracker gets a suffix "#2", "#3", ... so that two clients of the same
// server stay apart in metrics; a name set in Options is used as given.
var names = nameRegistry{used: map[string]int{}}

type nameRegistry struct {
	mu   sync.Mutex
	used map[string]int // live trackers per name
}

func (n *nameRegistry) acquire(explicit string, c redis.UniversalClient) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	name := explicit
	if name == "" {
		base := derivedName(c)
		name = base
		for i := 2; n.used[name] > 0; i++ {
			name = base + "#" + strconv.Itoa(i)
		}
	}
	n.used[name]++
	return name
}

func (n *nameRegistry) release(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.used[name]--; n.used[name] <= 0 {
		delete(n.used, name)
	}
}

// derivedName names a client after what it connects to: a plain client's
// address, "cluster:<first address>", "ring:<lowest address>", or
// "failover" (a failover client's options do not tell its master's name).
func derivedName(c redis.UniversalClient) string {
	switch c := c.(type) {
	case *redis.Client:
		o := c.Options()
		if o.Addr == "FailoverClient" {
			return "failover"
		}
		return o.Addr
	case *redis.ClusterClient:
		if a := c.Options().Addrs; len(a) > 0 {
			return "cluster:" + a[0]
		}
		return "cluster"
	case *redis.Ring:
		var addrs []string
		for _, a := range c.Options().Addrs {
			addrs = append(addrs, a)
		}
		sort.Strings(addrs)
		if len(addrs) > 0 {
			return "ring:" + addrs[0]
		}
		return "ring"
	}
	return "client"
}

// recordHolds records n holds of kind k that lasted d nanoseconds each.
func (m *trackerMetrics) recordHolds(k kindID, d int64, n uint64) {
	v := float64(d) / 1e9
	for ; n > 0; n-- {
		m.holdHist.Record(context.Background(), v, m.kindRec[k]...)
	}
}

func (m *trackerMetrics) addLeaks(ls []Leak) {
	if m == nil {
		return
	}
	for _, l := range ls {
		k, _ := kindOf(l.Kind)
		m.leaks.Add(context.Background(), 1, m.kindAttrs[k])
	}
}

func (m *trackerMetrics) close() {
	if m == nil {
		return
	}
	if m.reg != nil {
		_ = m.reg.Unregister()
	}
	names.release(m.name)
}
