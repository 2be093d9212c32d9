package redisleak_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func TestHandler(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{})
	c := leakyConn(bg, rdb)
	defer c.Close()
	scanUntil(t, tr, 1)
	srv := httptest.NewServer(tr.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"total", "idle", "inUse", "longLived", "leaked", "leaks", "observerMode", "clientKind", "pools"} {
		if _, ok := body[k]; !ok {
			t.Fatalf("field %q missing: %v", k, body)
		}
	}
	leaks := body["leaks"].([]any)
	if len(leaks) != 1 || body["leaked"].(float64) != 1 {
		t.Fatalf("leaks %v", body)
	}
	if _, ok := leaks[0].(map[string]any)["site"]; ok {
		t.Fatal("site shown without HandlerShowSites")
	}
	post, err := http.Post(srv.URL, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	post.Body.Close()
	if post.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", post.StatusCode)
	}
}

func TestHandlerShowSites(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{HandlerShowSites: true})
	c := leakyConn(bg, rdb)
	defer c.Close()
	scanUntil(t, tr, 1)
	rec := httptest.NewRecorder()
	tr.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if !strings.Contains(rec.Body.String(), "leakyConn") {
		t.Fatalf("site missing: %s", rec.Body)
	}
}

// fakeT records VerifyNone's failures.
type fakeT struct{ msgs []string }

func (f *fakeT) Helper() {}
func (f *fakeT) Errorf(format string, args ...any) {
	f.msgs = append(f.msgs, fmt.Sprintf(format, args...))
}

func TestVerifyNone(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{MaxHold: time.Hour})
	ft := &fakeT{}
	redisleak.VerifyNone(ft, tr)
	if len(ft.msgs) != 0 {
		t.Fatalf("clean tracker failed: %v", ft.msgs)
	}
	c := leakyConn(bg, rdb)
	lived := rdb.Conn()
	lived.Ping(redisleak.WithLongLived(bg))
	defer lived.Close()
	redisleak.VerifyNone(ft, tr, redisleak.VerifyWait(50*time.Millisecond))
	if len(ft.msgs) != 1 || !strings.Contains(ft.msgs[0], "leakyConn") || !strings.Contains(ft.msgs[0], "found 1 leaked") {
		t.Fatalf("VerifyNone: %v", ft.msgs)
	}
	// A hold that ends within the wait is not a leak.
	go func() { time.Sleep(30 * time.Millisecond); c.Close() }()
	ft2 := &fakeT{}
	redisleak.VerifyNone(ft2, tr)
	if len(ft2.msgs) != 0 {
		t.Fatalf("hold that ended: %v", ft2.msgs)
	}
}

func TestContextMarks(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{})
	// holdWith returns the tracker's view of a hold acquired with ctx.
	holdWith := func(ctx context.Context) redisleak.Leak {
		t.Helper()
		c := rdb.Conn()
		defer c.Close()
		if err := c.Ping(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		hs := tr.Holds()
		if len(hs) != 1 {
			t.Fatalf("holds %v, want the Conn's", hs)
		}
		return hs[0]
	}
	ctx := redisleak.WithOwner(redisleak.WithLongLived(bg), "x")
	if h := holdWith(ctx); h.LongLivedBy != redisleak.LongLivedMark || h.Owner != "x" {
		t.Fatalf("marks lost: %v", h)
	}
	plain := redisleak.WithoutLongLived(ctx)
	if h := holdWith(plain); h.LongLivedBy == redisleak.LongLivedMark || h.Owner != "x" {
		t.Fatalf("WithoutLongLived: %v", h)
	}
	if h := holdWith(bg); h.LongLivedBy == redisleak.LongLivedMark || h.Owner != "" {
		t.Fatalf("background carries marks: %v", h)
	}
	if redisleak.WithoutLongLived(bg) != bg {
		t.Fatal("WithoutLongLived allocated for an unmarked context")
	}
}

// An application's own go-redis hook is not named as the acquisition site.
type appHook struct{}

func (appHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (appHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { return next(ctx, cmd) }
}
func (appHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { return next(ctx, cmds) }
}

func TestSiteSkipsApplicationHooks(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	rdb.AddHook(appHook{})
	tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 150 * time.Millisecond, ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := leakyConn(bg, rdb)
	defer c.Close()
	assertSite(t, onlyLeak(t, scanUntil(t, tr, 1)), "leakyConn")
}

// A server that cannot be reached is not mistaken for a replaced observer.
func TestUnreachableServerKeepsObserverMode(t *testing.T) {
	port, err := redistest.FreePort(false)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
	defer rdb.Close()
	tr, err := redisleak.Instrument(rdb, redisleak.Options{ScanInterval: 20 * time.Millisecond, Logger: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for i := 0; i < 10; i++ {
		if rdb.Ping(bg).Err() == nil {
			t.Fatal("ping to a closed port succeeded")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(60 * time.Millisecond)
	if m := tr.Stats().ObserverMode; m != redisleak.ModeObserver || strings.Contains(logs.String(), "falling back") {
		t.Fatalf("mode %s; logs %s", m, logs)
	}
}

// OnLeak may call back into the tracker.
func TestOnLeakMayCallTracker(t *testing.T) {
	var got []redisleak.Leak
	var tr *redisleak.Tracker
	rdb, tr0, _ := setup(t, redisleak.Options{OnLeak: func(l redisleak.Leak) {
		got = append(got, l)
		_ = tr.Stats()
		_ = tr.Scan()
	}})
	tr = tr0
	c := leakyConn(bg, rdb)
	defer c.Close()
	scanUntil(t, tr, 1)
	if len(got) != 1 || got[0].Kind != redisleak.KindConn {
		t.Fatalf("OnLeak got %v", got)
	}
}
