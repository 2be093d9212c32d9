package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

func TestParseConfig(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(t *testing.T, c config)
		wantErr string
	}{
		{name: "defaults", check: func(t *testing.T, c config) {
			if c.Redis != "" || c.redisOpts != nil || c.Listen != "127.0.0.1:8080" || c.Duration != 0 || c.MaxHold != 2*time.Second ||
				c.ScanInterval != 500*time.Millisecond || !c.Leak || c.LeakAfter != 1500*time.Millisecond || !c.MarkLongLived || c.AutoLongLived {
				t.Errorf("defaults: %+v", c)
			}
		}},
		// The README tells users to set REDIS_ADDR for the tests: the demo
		// must not follow it.
		{name: "REDIS_ADDR ignored", env: map[string]string{"REDIS_ADDR": "10.0.0.1:6379"}, check: func(t *testing.T, c config) {
			if c.Redis != "" || c.redisOpts != nil {
				t.Errorf("Redis = %q, options %+v: want the embedded server", c.Redis, c.redisOpts)
			}
		}},
		{name: redisEnv, env: map[string]string{redisEnv: "10.0.0.1:6379", "REDIS_ADDR": "x:2"}, check: func(t *testing.T, c config) {
			if c.redisOpts == nil || c.redisOpts.Addr != "10.0.0.1:6379" {
				t.Errorf("options %+v", c.redisOpts)
			}
		}},
		{name: "flag wins over " + redisEnv, args: []string{"-redis", "h:1"}, env: map[string]string{redisEnv: "x:2"}, check: func(t *testing.T, c config) {
			if c.redisOpts == nil || c.redisOpts.Addr != "h:1" || redisLabel(c.redisOpts) != "h:1" {
				t.Errorf("options %+v", c.redisOpts)
			}
		}},
		{name: "host:port without host", args: []string{"-redis", ":6379"}, check: func(t *testing.T, c config) {
			if c.redisOpts == nil || c.redisOpts.Addr != "localhost:6379" {
				t.Errorf("options %+v", c.redisOpts)
			}
		}},
		{name: "URL", args: []string{"-redis", "redis://user:pass@host:6379/3"}, check: func(t *testing.T, c config) {
			o := c.redisOpts
			if o == nil || o.Addr != "host:6379" || o.Username != "user" || o.Password != "pass" || o.DB != 3 || o.TLSConfig != nil {
				t.Fatalf("options %+v", o)
			}
			if got := redisLabel(o); got != "redis://user@host:6379/3" {
				t.Errorf("label %q", got)
			}
		}},
		{name: "TLS URL", args: []string{"-redis", "rediss://:secret@cache.example:6380"}, check: func(t *testing.T, c config) {
			o := c.redisOpts
			if o == nil || o.Addr != "cache.example:6380" || o.Password != "secret" || o.TLSConfig == nil || o.TLSConfig.ServerName != "cache.example" {
				t.Fatalf("options %+v", o)
			}
			if got := redisLabel(o); got != "rediss://cache.example:6380" {
				t.Errorf("label %q", got)
			}
		}},
		{name: "URL from " + redisEnv, env: map[string]string{redisEnv: "redis://10.0.0.2:6390/1"}, check: func(t *testing.T, c config) {
			if c.redisOpts == nil || c.redisOpts.Addr != "10.0.0.2:6390" || c.redisOpts.DB != 1 {
				t.Errorf("options %+v", c.redisOpts)
			}
		}},
		{name: "unix socket URL", args: []string{"-redis", "unix:///run/redis.sock?db=3"}, check: func(t *testing.T, c config) {
			o := c.redisOpts
			if o == nil || o.Network != "unix" || o.Addr != "/run/redis.sock" || o.DB != 3 {
				t.Fatalf("options %+v", o)
			}
			if got := redisLabel(o); got != "unix:/run/redis.sock?db=3" {
				t.Errorf("label %q", got)
			}
		}},
		{name: "bad database in URL", args: []string{"-redis", "redis://u:secret@host:6379/x"}, wantErr: `-redis "redis://u:xxxxx@host:6379/x": redis: invalid database number: "x"`},
		{name: "bad scheme", args: []string{"-redis", "http://host:6379"}, wantErr: `-redis "http://host:6379": redis: invalid URL scheme: http`},
		{name: "unparsable URL", args: []string{"-redis", "redis://u:secret@host:6379/%zz"}, wantErr: `-redis: not a valid URL: invalid URL escape "%zz"`},
		{name: "no port", args: []string{"-redis", "localhost"}, wantErr: `-redis "localhost": want host:port or a URL`},
		{name: "bad port", args: []string{"-redis", "localhost:99999"}, wantErr: `bad port "99999"`},
		{name: "all flags", args: []string{"-listen", ":0", "-duration", "5s", "-max-hold", "1s", "-scan", "100ms", "-leak=false",
			"-leak-after", "3s", "-mark-long-lived=false", "-auto-long-lived", "-concurrency", "2", "-rate", "5", "-status", "0"}, check: func(t *testing.T, c config) {
			want := config{Listen: ":0", Duration: 5 * time.Second, MaxHold: time.Second, ScanInterval: 100 * time.Millisecond,
				LeakAfter: 3 * time.Second, AutoLongLived: true, Concurrency: 2, Rate: 5}
			c.ready = nil
			if fmt.Sprintf("%+v", c) != fmt.Sprintf("%+v", want) {
				t.Errorf("got %+v, want %+v", c, want)
			}
		}},
		{name: "negative duration", args: []string{"-duration", "-1s"}, wantErr: "-duration"},
		{name: "zero max hold", args: []string{"-max-hold", "0"}, wantErr: "-max-hold"},
		{name: "zero concurrency", args: []string{"-concurrency", "0"}, wantErr: "-concurrency"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected"},
		{name: "unknown flag", args: []string{"-nope"}, wantErr: "nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseConfig(tt.args, env(tt.env), io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("the error shows the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
	var help bytes.Buffer
	if _, err := parseConfig([]string{"-h"}, env(nil), &help); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"-auto-long-lived", "Options.AutoLongLived", "-mark-long-lived"} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("-help lacks %q:\n%s", want, help.String())
		}
	}
}

// testConfig is the default configuration, on a free port.
func testConfig(t *testing.T, args ...string) config {
	t.Helper()
	c, err := parseConfig(append([]string{"-listen", "127.0.0.1:0"}, args...), func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// lockedBuffer collects the demo's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// runDemo runs the demo in-process for cfg.Duration and returns what it saw.
func runDemo(t *testing.T, cfg config) (*result, string) {
	t.Helper()
	var out lockedBuffer
	res, err := run(context.Background(), cfg, &out)
	if testing.Verbose() || t.Failed() || err != nil {
		t.Logf("demo output:\n%s", out.String())
	}
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return res, out.String()
}

// isCompanion reports whether a hold belongs to one of the long-lived
// holders (queue worker, QueueEvents, SSE, keyspace).
func isCompanion(l redisleak.Leak) bool {
	return l.Owner == "sse" || l.Owner == "keyspace" || strings.HasPrefix(l.Owner, "bullmq:")
}

// checkMarked checks a normal run: the seeded leak reported, nothing else.
func checkMarked(t *testing.T, res *result, out string, wantLongLived int) {
	t.Helper()
	if len(res.Reported) != 1 {
		t.Fatalf("reported %d leaks, want exactly the seeded one: %v", len(res.Reported), res.Reported)
	}
	l := res.Reported[0]
	if !strings.Contains(l.Site, "leakyReport") || l.Kind != redisleak.KindConn {
		t.Errorf("reported leak %v: want a conn acquired in leakyReport", l)
	}
	if len(res.Leaks) != 1 || res.Stats.Leaked != 1 || res.Stats.LeaksReported != 1 {
		t.Errorf("at the end: %d current leaks, stats %+v; want 1", len(res.Leaks), res.Stats)
	}
	longLived := map[string]int{}
	for _, h := range res.Holds {
		if isCompanion(h) && h.LongLived {
			longLived[h.Owner]++
		}
		if isCompanion(h) && h.Leaked {
			t.Errorf("false positive: %v", h)
		}
	}
	if res.Stats.LongLived != wantLongLived {
		t.Errorf("long-lived = %d (%v), want %d", res.Stats.LongLived, longLived, wantLongLived)
	}
	if res.Jobs.Completed == 0 || res.Jobs.Signups == 0 {
		t.Errorf("the service did no work: %+v", res.Jobs)
	}
	for _, want := range []string{"dashboard at http://127.0.0.1:", "redis connection leak detected", "leakyReport", "final stats after", "stopped"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// checkNaive checks a -mark-long-lived=false run: the naive detector
// reports the companions' holders too, each with its own site.
func checkNaive(t *testing.T, res *result, wantOwners ...string) {
	t.Helper()
	seeded := 0
	owners := map[string]int{}
	for _, l := range res.Reported {
		if strings.Contains(l.Site, "leakyReport") {
			seeded++
			continue
		}
		if !isCompanion(l) {
			t.Errorf("unexpected leak %v", l)
			continue
		}
		o := l.Owner
		if i := strings.LastIndexByte(o, ':'); strings.HasPrefix(o, "bullmq:") && i > 0 {
			o = o[:i]
		}
		owners[o+"/"+string(l.Kind)]++
		// The tracker does not always know the site of a command still
		// running (the site is then ""); when it does, it is in the
		// companion's own code.
		if pkg := companionPkg(l.Owner); l.Site != "" && !strings.Contains(l.Site, pkg) {
			t.Errorf("leak %v: site %q is not in %s", l, l.Site, pkg)
		}
	}
	if seeded != 1 {
		t.Errorf("seeded leak reported %d times, want 1", seeded)
	}
	for _, o := range wantOwners {
		if !hasKeyWithPrefix(owners, o) {
			t.Errorf("no leak reported for %s; reported: %v", o, owners)
		}
	}
	if res.Stats.LongLived != 0 {
		t.Errorf("long-lived = %d in the naive mode, want 0", res.Stats.LongLived)
	}
}

// companionPkg is the package (as a site names it) of an owner's code.
// hasKeyWithPrefix reports whether a key of m begins with prefix.
func hasKeyWithPrefix[V any](m map[string]V, prefix string) bool {
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

func companionPkg(owner string) string {
	if strings.HasPrefix(owner, "bullmq:") {
		return "bullmq_compat."
	}
	return owner + "."
}

// naiveOwners are the holders a naive detector flags on miniredis.
var naiveOwners = []string{"bullmq:worker/", "bullmq:events/", "sse/pubsub", "sse/conn"}

// TestRunMiniredis: a 5 s run on the embedded Redis exits cleanly with the
// seeded leak reported, named by its site, and no false positive: the
// worker's blocking connection, QueueEvents and the SSE manager's two
// connections are long-lived.
func TestRunMiniredis(t *testing.T) {
	t.Parallel()
	res, out := runDemo(t, testConfig(t, "-duration", "5s", "-status", "1s"))
	checkMarked(t, res, out, 4)
	if !strings.HasPrefix(res.Keyspace, "off: the embedded miniredis") {
		t.Errorf("keyspace note %q", res.Keyspace)
	}
}

// TestRunNoLeak: with -leak=false nothing at all is reported.
func TestRunNoLeak(t *testing.T) {
	t.Parallel()
	res, _ := runDemo(t, testConfig(t, "-duration", "4s", "-leak=false"))
	if len(res.Reported) != 0 || res.Stats.Leaked != 0 {
		t.Errorf("reported %v; stats %+v", res.Reported, res.Stats)
	}
	if res.Stats.LongLived != 4 {
		t.Errorf("long-lived = %d, want 4", res.Stats.LongLived)
	}
}

// TestRunMiniredisNaive: with -mark-long-lived=false the same holders are
// flagged by the naive detector, each under its owner and own acquisition
// site, as the tracker names it.
func TestRunMiniredisNaive(t *testing.T) {
	t.Parallel()
	res, out := runDemo(t, testConfig(t, "-duration", "5s", "-leak-after", "1s", "-mark-long-lived=false"))
	checkNaive(t, res, naiveOwners...)
	for _, want := range []string{"naive detector: redis connection held longer than max hold", `owner=sse site="manager.go:`, "sse.NewManager", "leakyReport"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out, "redisleak: redis connection leak detected") {
		t.Errorf("the naive mode shows the tracker's own reports")
	}
}

// TestRunRealRedis runs both modes on a private redis-server, where the
// keyspace manager is on (it merges notify-keyspace-events: private
// server only). The marked run names the server by a URL with a database
// and checks that the run writes only keys and channels under its own
// prefix, and leaves none behind.
func TestRunRealRedis(t *testing.T) {
	t.Parallel()
	srv := redistest.Private(t)
	t.Run("marked", func(t *testing.T) {
		const db = 2
		ctx := context.Background()
		rdb := srv.Client(func(o *redis.Options) { o.DB = db })
		defer rdb.Close()
		// Every key written (keyspace notifications, all classes) and
		// every channel published to, through one PSUBSCRIBE *.
		if err := rdb.ConfigSet(ctx, "notify-keyspace-events", "KEA").Err(); err != nil {
			t.Fatal(err)
		}
		ps := rdb.PSubscribe(ctx, "*")
		if _, err := ps.Receive(ctx); err != nil {
			t.Fatal(err)
		}
		var (
			mu       sync.Mutex
			keys     = map[string]bool{}
			channels = map[string]bool{}
		)
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			for m := range ps.Channel() {
				mu.Lock()
				if k, ok := strings.CutPrefix(m.Channel, "__keyspace@"); ok {
					keys[k] = true // "<db>__:<key>"
				} else if !strings.HasPrefix(m.Channel, "__keyevent@") {
					channels[m.Channel] = true
				}
				mu.Unlock()
			}
		}()

		url := fmt.Sprintf("redis://%s/%d", srv.Addr, db)
		res, out := runDemo(t, testConfig(t, "-duration", "5s", "-leak-after", "1s", "-redis", url))
		_ = ps.Close()
		<-watched
		if res.Redis != url {
			t.Errorf("redis label %q, want %q", res.Redis, url)
		}
		if !strings.HasPrefix(res.Keyspace, "on") {
			t.Fatalf("keyspace: %s", res.Keyspace)
		}
		// worker, QueueEvents, SSE subscriber + command, keyspace subscriber + config
		checkMarked(t, res, out, 6)
		if res.Jobs.Expired == 0 {
			t.Errorf("keyspace handler saw no expired session: %+v", res.Jobs)
		}

		mu.Lock()
		defer mu.Unlock()
		if !strings.HasPrefix(res.KeyPrefix, "{redisleak-demo-") {
			t.Fatalf("key prefix %q", res.KeyPrefix)
		}
		kinds := map[string]bool{}
		for k := range keys {
			key, ok := strings.CutPrefix(k, fmt.Sprintf("%d__:", db))
			if !ok || !strings.HasPrefix(key, res.KeyPrefix) {
				t.Errorf("the run wrote key __keyspace@%s, outside %s* in db %d", k, res.KeyPrefix, db)
				continue
			}
			rest := strings.TrimPrefix(key, res.KeyPrefix)
			kinds[rest[:strings.IndexAny(rest+":", ":")]] = true
		}
		for c := range channels {
			if !strings.HasPrefix(c, res.KeyPrefix) {
				t.Errorf("the run published on %q, outside %s*", c, res.KeyPrefix)
			}
		}
		// The service's sessions and counter, the queue, the SSE history
		// and channel: all seen, so the check above looked at them.
		for _, want := range []string{"session", "emails", "welcome", "history"} {
			if !kinds[want] {
				t.Errorf("no %s%s... key seen; keys seen under the prefix: %v", res.KeyPrefix, want, kinds)
			}
		}
		if !channels[res.KeyPrefix+"live"] {
			t.Errorf("the SSE channel was not seen: %v", channels)
		}
		if n, err := rdb.DBSize(ctx).Result(); err != nil || n != 0 {
			t.Errorf("after the run, db %d holds %d keys (%v): the run's keys were not deleted", db, n, err)
		}
	})
	t.Run("naive", func(t *testing.T) {
		res, _ := runDemo(t, testConfig(t, "-duration", "5s", "-leak-after", "1s", "-redis", srv.Addr, "-mark-long-lived=false"))
		checkNaive(t, res, append(naiveOwners, "keyspace/pubsub", "keyspace/conn")...)
	})
}

// TestIgnoresREDIS_ADDR: REDIS_ADDR, set for the tests, does not move the
// demo off its embedded server; its own variable does.
func TestIgnoresREDIS_ADDR(t *testing.T) {
	t.Setenv("REDIS_ADDR", "127.0.0.1:1")
	t.Setenv(redisEnv, "")
	c, err := parseConfig(nil, os.Getenv, io.Discard)
	if err != nil || c.redisOpts != nil {
		t.Fatalf("with REDIS_ADDR set: options %+v, err %v; want the embedded server", c.redisOpts, err)
	}
	t.Setenv(redisEnv, "redis://127.0.0.1:1/4")
	c, err = parseConfig(nil, os.Getenv, io.Discard)
	if err != nil || c.redisOpts == nil || c.redisOpts.Addr != "127.0.0.1:1" || c.redisOpts.DB != 4 {
		t.Fatalf("with %s set: options %+v, err %v", redisEnv, c.redisOpts, err)
	}
}

// TestEndpoints: the health JSON names the leak's site, /metrics is
// Prometheus text with the tracker's gauges, the API works, and an
// interrupted run (no -duration) shuts down cleanly.
func TestEndpoints(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "-max-hold", "1s", "-leak-after", "200ms", "-status", "0")
	urls := make(chan string, 1)
	cfg.ready = func(u string) { urls <- u }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out lockedBuffer
	done := make(chan error, 1)
	go func() {
		_, err := run(ctx, cfg, &out)
		done <- err
	}()
	var base string
	select {
	case base = <-urls:
	case err := <-done:
		t.Fatalf("run ended early: %v\n%s", err, out.String())
	case <-time.After(20 * time.Second):
		t.Fatal("demo not ready within 20s")
	}
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	get := func(path string) (int, string, http.Header) {
		t.Helper()
		resp, err := client.Get(base + strings.TrimPrefix(path, "/"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}

	// /health/redis-pool: wait for the seeded leak.
	// The health JSON's "autoLongLived" is the list of holders detected
	// by behaviour; it hides Stats.AutoLongLived (same JSON name), so it
	// is declared here to shadow the embedded count.
	var health struct {
		redisleak.Stats
		Leaks []struct {
			Site  string `json:"site"`
			Kind  string `json:"kind"`
			Owner string `json:"owner"`
		} `json:"leaks"`
		AutoLongLived []json.RawMessage `json:"autoLongLived"`
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body, _ := get("/health/redis-pool")
		if code != 200 {
			t.Fatalf("health: %d %s", code, body)
		}
		if err := json.Unmarshal([]byte(body), &health); err != nil {
			t.Fatalf("health JSON: %v\n%s", err, body)
		}
		if len(health.Leaks) > 0 && health.LeaksReported > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leak in /health/redis-pool within 15s: %s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(health.Leaks) != 1 || !strings.Contains(health.Leaks[0].Site, "leakyReport") || health.LongLived != 4 {
		t.Errorf("health: %+v", health)
	}
	if health.AutoLongLived == nil || len(health.AutoLongLived) != 0 {
		t.Errorf("health: autoLongLived %v, want [] (automatic detection off)", health.AutoLongLived)
	}

	code, body, hdr := get("/metrics")
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") {
		t.Errorf("/metrics: %d %s", code, hdr.Get("Content-Type"))
	}
	for _, want := range []string{"redisleak_connections_leaked", "redisleak_connections_long_lived", "redisleak_leaks", "redisleak_connection_hold_duration_seconds_bucket", "demo_signups", "go_goroutines"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	resp, err := client.Post(base+"api/signup?user=ada", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var added map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&added)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || added["job"] == "" {
		t.Fatalf("signup: %d %v", resp.StatusCode, added)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		code, body, _ := get("/api/jobs/" + added["job"])
		if code == 200 && strings.Contains(body, `"finishedOn"`) && !strings.Contains(body, `"finishedOn":"0001`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s not finished within 10s: %d %s", added["job"], code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, _, _ := get("/api/jobs/nope"); code != 404 {
		t.Errorf("unknown job: %d", code)
	}
	code, body, _ = get("/")
	if code != 200 || !strings.Contains(body, `<canvas id="chart"`) || !strings.Contains(body, "/static/dashboard.js") {
		t.Errorf("dashboard: %d", code)
	}
	if code, body, _ := get("/static/dashboard.js"); code != 200 || !strings.Contains(body, "EventSource") {
		t.Errorf("dashboard.js: %d", code)
	}
	var s sample
	_, body, _ = get("/api/stats")
	if err := json.Unmarshal([]byte(body), &s); err != nil || s.Total == 0 || len(s.Leaks) != 1 {
		t.Errorf("/api/stats: %v %s", err, body)
	}
	if s.AutoDetection || s.AutoLongLived != 0 || s.AutoHolders == nil || len(s.AutoHolders) != 0 || s.Tracker != nil {
		t.Errorf("/api/stats with automatic detection off: %s", body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30s of the interrupt")
	}
	if !strings.Contains(out.String(), "stopped") {
		t.Errorf("output:\n%s", out.String())
	}
}
