package redisleak_test

import (
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/redisleak/redisleak"
)

// Two clients on one MeterProvider: each tracker's metrics carry its name
// in the attribute redisleak.client. Unnamed clients of the same server get
// derived names that still differ.
func ExampleTracker_Name() {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer mp.Shutdown(bg)

	cache := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer cache.Close()
	queue := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer queue.Close()
	sessions := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer sessions.Close()

	for _, c := range []struct {
		rdb  *redis.Client
		name string
	}{{cache, ""}, {queue, ""}, {sessions, "sessions"}} {
		tr, err := redisleak.Instrument(c.rdb, redisleak.Options{MeterProvider: mp, Name: c.name, ScanInterval: time.Hour})
		if err != nil {
			panic(err)
		}
		defer tr.Close()
		fmt.Println(tr.Name())
	}
	// Output:
	// 127.0.0.1:6379
	// 127.0.0.1:6379#2
	// sessions
}
