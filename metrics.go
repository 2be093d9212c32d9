package redisleak

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Metric names. The hold-time histogram is named apart from redisotel's
// db.client.connections.use_time, which times commands, not holds.
const (
	MetricInUse     = "redisleak.connections.in_use"
	MetricIdle      = "redisleak.connections.idle"
	MetricLongLived = "redisleak.connections.long_lived"
	MetricLeaked    = "redisleak.connections.leaked"
	MetricHoldTime  = "redisleak.connection.hold.duration"
	MetricLeaks     = "redisleak.leaks"
)

const meterName = "github.com/redisleak/redisleak"

type trackerMetrics struct {
	reg       metric.Registration
	holdHist  metric.Float64Histogram
	leaks     metric.Int64Counter
	kindAttrs [len6]metric.MeasurementOption
	kindRec   [len6][]metric.RecordOption // built once: no allocation per Record
	base      attribute.KeyValue
}

func newTrackerMetrics(t *Tracker, mp metric.MeterProvider) (*trackerMetrics, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(meterName)
	m := &trackerMetrics{base: attribute.String("redis.client.kind", t.clientKind)}
	var err error
	inUse, err := meter.Int64ObservableGauge(MetricInUse, metric.WithDescription("Connections held out of the pool, long-lived ones included."), metric.WithUnit("{connection}"))
	if err != nil {
		return nil, err
	}
	idle, err := meter.Int64ObservableGauge(MetricIdle, metric.WithDescription("Idle connections in the pool."), metric.WithUnit("{connection}"))
	if err != nil {
		return nil, err
	}
	longLived, err := meter.Int64ObservableGauge(MetricLongLived, metric.WithDescription("Held connections that are long-lived by mark or by nature."), metric.WithUnit("{connection}"))
	if err != nil {
		return nil, err
	}
	leaked, err := meter.Int64ObservableGauge(MetricLeaked, metric.WithDescription("Held connections over their threshold and not long-lived."), metric.WithUnit("{connection}"))
	if err != nil {
		return nil, err
	}
	m.holdHist, err = meter.Float64Histogram(MetricHoldTime, metric.WithDescription("How long a connection was held out of the pool, per hold."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
	if err != nil {
		return nil, err
	}
	m.leaks, err = meter.Int64Counter(MetricLeaks, metric.WithDescription("Leaks detected (each reported once)."), metric.WithUnit("{leak}"))
	if err != nil {
		return nil, err
	}
	for i, k := range allKinds {
		m.kindAttrs[i] = metric.WithAttributes(m.base, attribute.String("kind", k))
		m.kindRec[i] = []metric.RecordOption{m.kindAttrs[i]}
	}
	attrs := metric.WithAttributes(m.base)
	m.reg, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := t.Stats()
		o.ObserveInt64(inUse, int64(s.InUse), attrs)
		o.ObserveInt64(idle, int64(s.Idle), attrs)
		o.ObserveInt64(longLived, int64(s.LongLived), attrs)
		o.ObserveInt64(leaked, int64(s.Leaked), attrs)
		return nil
	}, inUse, idle, longLived, leaked)
	if err != nil {
		return nil, err
	}
	return m, nil
}

func (m *trackerMetrics) recordHold(kind int, d int64) {
	if m == nil {
		return
	}
	m.holdHist.Record(context.Background(), float64(d)/1e9, m.kindRec[kind]...)
}

func (m *trackerMetrics) addLeaks(ls []Leak) {
	if m == nil {
		return
	}
	for _, l := range ls {
		m.leaks.Add(context.Background(), 1, m.kindAttrs[kindIndex(l.Kind)])
	}
}

func (m *trackerMetrics) close() {
	if m != nil && m.reg != nil {
		_ = m.reg.Unregister()
	}
}
