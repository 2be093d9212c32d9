package main

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
)

// metrics is the OpenTelemetry meter provider whose reader is the
// Prometheus exporter, and the /metrics handler that serves it.
type metrics struct {
	provider *sdkmetric.MeterProvider
	handler  http.Handler
	reg      metric.Registration
}

// newMetrics uses a registry of its own (not the global one), so that
// several runs in one process (the tests) do not collide.
func newMetrics() (*metrics, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, err
	}
	return &metrics{
		provider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp),
			sdkmetric.WithResource(resource.NewSchemaless(attribute.String("service.name", "redisleak-demo")))),
		handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
	}, nil
}

// observeService exports the service's own counters beside the tracker's.
func (m *metrics) observeService(s *service) {
	meter := m.provider.Meter("redisleak-demo")
	signups, err1 := meter.Int64ObservableCounter("demo.signups", metric.WithDescription("Signups accepted by the API."))
	completed, err2 := meter.Int64ObservableCounter("demo.jobs.completed", metric.WithDescription("Jobs completed, as seen by QueueEvents."))
	failed, err3 := meter.Int64ObservableCounter("demo.jobs.failed", metric.WithDescription("Jobs failed for good, as seen by QueueEvents."))
	clients, err4 := meter.Int64ObservableGauge("demo.sse.clients", metric.WithDescription("Open SSE streams."))
	for _, err := range []error{err1, err2, err3, err4} {
		if err != nil {
			return
		}
	}
	m.reg, _ = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(signups, s.signups.Load())
		o.ObserveInt64(completed, s.completed.Load())
		o.ObserveInt64(failed, s.failed.Load())
		o.ObserveInt64(clients, int64(s.sse.Stats().Clients))
		return nil
	}, signups, completed, failed, clients)
}

func (m *metrics) shutdown() {
	if m.reg != nil {
		_ = m.reg.Unregister()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = m.provider.Shutdown(ctx)
}
