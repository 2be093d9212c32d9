package redisleak_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// logBuffer is a concurrency-safe slog sink for assertions on log output.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// setup returns a client on a private Redis and a tracker with a short
// threshold and no background scan (tests call Scan).
func setup(t *testing.T, opts redisleak.Options, ro ...func(*redis.Options)) (*redis.Client, *redisleak.Tracker, *logBuffer) {
	t.Helper()
	srv := redistest.Private(t)
	rdb := srv.Client(ro...)
	logs := &logBuffer{}
	if opts.MaxHold == 0 {
		opts.MaxHold = 150 * time.Millisecond
	}
	if opts.ScanInterval == 0 {
		opts.ScanInterval = time.Hour
	}
	if opts.Logger == nil {
		opts.Logger = logs.logger()
	}
	tr, err := redisleak.Instrument(rdb, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return rdb, tr, logs
}

// scanUntil scans until at least n leaks are found.
func scanUntil(t *testing.T, tr *redisleak.Tracker, n int) []redisleak.Leak {
	t.Helper()
	var leaks []redisleak.Leak
	redistest.WaitFor(t, 5*time.Second, "leaks to be found", func() bool {
		leaks = tr.Scan()
		return len(leaks) >= n
	})
	return leaks
}

func onlyLeak(t *testing.T, leaks []redisleak.Leak) redisleak.Leak {
	t.Helper()
	if len(leaks) != 1 {
		t.Fatalf("want 1 leak, got %d: %v", len(leaks), leaks)
	}
	return leaks[0]
}

func assertSite(t *testing.T, l redisleak.Leak, fn string) {
	t.Helper()
	if !strings.Contains(l.Site, fn) || !strings.Contains(l.Site, "_test.go:") {
		t.Fatalf("site %q does not name %s in a _test.go file; leak: %s", l.Site, fn, l)
	}
	if !strings.Contains(l.String(), l.Site) {
		t.Fatalf("String() %q lacks the site", l.String())
	}
}

var bg = context.Background()
