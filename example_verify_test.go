package redisleak_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
)

// countingT is the part of *testing.T that VerifyNone uses; here it only
// counts the failures.
type countingT struct{ failures int }

func (t *countingT) Helper()               {}
func (t *countingT) Errorf(string, ...any) { t.failures++ }

// VerifyNone at the end of a test fails it for every connection still
// held that is not long-lived, naming where it was taken; holds that end
// within VerifyWait are not leaks.
func ExampleVerifyNone() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	tr, err := redisleak.Instrument(rdb, redisleak.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		panic(err)
	}
	defer tr.Close()
	ctx := context.Background()

	queue := rdb.Conn() // held on purpose for the test's life
	defer queue.Close()
	queue.Ping(redisleak.WithLongLived(ctx))

	forgotten := rdb.Conn() // the bug: never closed by the code under test
	forgotten.Ping(ctx)

	t := &countingT{} // in a test: redisleak.VerifyNone(t, tr)
	redisleak.VerifyNone(t, tr, redisleak.VerifyWait(10*time.Millisecond))
	fmt.Println("failures:", t.failures)

	forgotten.Close()
	t = &countingT{}
	redisleak.VerifyNone(t, tr, redisleak.VerifyWait(10*time.Millisecond))
	fmt.Println("after Close:", t.failures)
	// Output:
	// failures: 1
	// after Close: 0
}

// VerifyTestMain checks a whole package's tests at once, from TestMain,
// like goleak.VerifyTestMain: the tests run, then any connection of the
// tracker's client still held and not long-lived fails the package.
func ExampleVerifyTestMain() {
	// In the package's main_test.go:
	//
	//	func TestMain(m *testing.M) {
	//		redisleak.VerifyTestMain(m, tr)
	//	}
	var m *testing.M // the *testing.M that TestMain receives
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	tr, _ := redisleak.Instrument(rdb, redisleak.Options{})
	redisleak.VerifyTestMain(m, tr, redisleak.IgnoreOwner("bullmq:worker"))
}

// WithMaxHold gives a long but bounded hold its own threshold: a batch
// import on a Conn is not a leak at 50 ms, though the tracker's MaxHold
// is 10 ms.
func ExampleWithMaxHold() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	tr, err := redisleak.Instrument(rdb, redisleak.Options{
		MaxHold:      10 * time.Millisecond,
		ScanInterval: time.Hour, // this example scans by hand
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		panic(err)
	}
	defer tr.Close()

	ctx := redisleak.WithMaxHold(context.Background(), time.Minute)
	batch := rdb.Conn()
	defer batch.Close()
	batch.Ping(ctx)
	time.Sleep(50 * time.Millisecond)

	fmt.Println("leaks:", len(tr.Scan()))
	for _, h := range tr.Holds() {
		fmt.Println("limit:", h.MaxHold)
	}
	// Output:
	// leaks: 0
	// limit: 1m0s
}
