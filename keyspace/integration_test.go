package keyspace

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
)

// Integration tests on real Redis. Every test that changes server state
// (CONFIG SET, CLIENT KILL, restart) uses a private server.

func configValue(t *testing.T, c *redis.Client) string {
	t.Helper()
	v, err := c.ConfigGet(context.Background(), configParam).Result()
	if err != nil {
		t.Fatalf("CONFIG GET: %v", err)
	}
	return v[configParam]
}

func TestConfigMergeKeepsServerFlags(t *testing.T) {
	srv := redistest.Private(t, redistest.PrivateOptions{Args: []string{"--notify-keyspace-events", "Elm"}})
	rdb := srv.Client()
	before := configValue(t, rdb)
	m := startManager(t, rdb, Options{Flags: "Kgx", RestoreOnClose: true}, func(m *Manager) {
		m.Handle("*", func(Event) {})
	})
	after := configValue(t, rdb)
	have := parseServerFlags(after)
	if want := parseServerFlags(before) | flagKeyspace | flagGeneric | flagExpired; have != want {
		t.Fatalf("after merge the server has %q (was %q), want exactly the union %q", after, before, want)
	}
	// Nothing to do for a second manager whose flags are already there.
	second := startManager(t, rdb, Options{Flags: "Ex"}, nil)
	if again := configValue(t, rdb); again != after {
		t.Errorf("second manager changed %q to %q", after, again)
	}
	// The original, plus the x the second manager still needs.
	closeManager(t, m)
	if restored := configValue(t, rdb); parseServerFlags(restored) != parseServerFlags(before+"x") {
		t.Errorf("RestoreOnClose with another manager running: server has %q, want %q", restored, before+"x")
	}
	closeManager(t, second) // no RestoreOnClose: leaves it
	if v := configValue(t, rdb); parseServerFlags(v) != parseServerFlags(before+"x") {
		t.Errorf("a manager without RestoreOnClose changed the setting to %q on Close", v)
	}
}

func TestRestoreLeavesLaterChangesAlone(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	errs := newErrSink()
	m := startManager(t, rdb, Options{Flags: "Ex", RestoreOnClose: true, OnError: errs.report}, nil)
	if err := rdb.ConfigSet(context.Background(), configParam, "KA").Err(); err != nil {
		t.Fatal(err)
	}
	closeManager(t, m)
	if v := configValue(t, rdb); parseServerFlags(v) != parseServerFlags("KA") {
		t.Errorf("restore clobbered a later change: %q", v)
	}
	var ne *NodeError
	if err := <-errs.ch; !errors.As(err, &ne) || ne.Op != "restore" {
		t.Errorf("OnError got %v, want a restore NodeError", err)
	}
}

func TestRealEventsForWatchedKeysOnly(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	ctx := context.Background()
	rec := newRecorder()
	startManager(t, rdb, Options{}, func(m *Manager) {
		m.Handle("watch:*", rec.handle)
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(rdb.Set(ctx, "other:1", "x", 0).Err())
	must(rdb.Set(ctx, "watch:a", "1", 0).Err())
	must(rdb.Del(ctx, "watch:a").Err())
	must(rdb.Set(ctx, "watch:b", "1", 0).Err())
	must(rdb.Expire(ctx, "watch:b", time.Hour).Err())
	must(rdb.Set(ctx, "watch:c", "1", 20*time.Millisecond).Err())
	must(rdb.Del(ctx, "other:1").Err())
	// Active expiry runs every 100ms; reading the key after its TTL expires
	// it at once, so the test does not depend on the background cycle.
	time.Sleep(30 * time.Millisecond) // let the 20ms TTL pass
	if n, _ := rdb.Exists(ctx, "watch:c").Result(); n != 0 {
		t.Fatalf("watch:c still exists")
	}
	got := pairs(rec.until(t, "watch:c", EventExpired))
	want := []string{
		"set watch:a", "del watch:a",
		"set watch:b", "expire watch:b",
		"set watch:c", "expire watch:c", "expired watch:c",
	}
	if !equalStrings(got, want) {
		t.Fatalf("events = %q\nwant %q", got, want)
	}
}

func TestExpiredViaKeyeventChannel(t *testing.T) {
	srv := redistest.Private(t, redistest.PrivateOptions{Args: []string{"--notify-keyspace-events", "Ex"}})
	rdb := srv.Client()
	ctx := context.Background()
	rec := newRecorder()
	startManager(t, rdb, Options{Flags: "Ex", Config: ConfigVerify}, func(m *Manager) {
		if err := m.HandleEvents("sess:*", rec.handle, EventExpired); err != nil {
			t.Fatal(err)
		}
	})
	rdb.Set(ctx, "cart:1", "x", 10*time.Millisecond)
	rdb.Set(ctx, "sess:1", "x", 10*time.Millisecond)
	time.Sleep(20 * time.Millisecond) // let the TTLs pass
	rdb.Exists(ctx, "cart:1", "sess:1")
	got := pairs(rec.until(t, "sess:1", EventExpired))
	if want := []string{"expired sess:1"}; !equalStrings(got, want) {
		t.Fatalf("events = %q, want %q", got, want)
	}
}

func TestVerifyModeReportsMissingFlags(t *testing.T) {
	srv := redistest.Private(t, redistest.PrivateOptions{Args: []string{"--notify-keyspace-events", "Ex"}})
	rdb := srv.Client()
	m, err := NewManager(rdb, Options{Flags: "KEA", Config: ConfigVerify})
	if err != nil {
		t.Fatal(err)
	}
	err = m.Start(context.Background())
	if !errors.Is(err, ErrFlagsMissing) || !strings.Contains(err.Error(), srv.Addr) {
		t.Fatalf("Start = %v, want ErrFlagsMissing naming the node", err)
	}
	if v := configValue(t, rdb); v != "xE" {
		t.Errorf("verify mode changed the setting to %q", v)
	}
	errs := newErrSink()
	startManager(t, rdb, Options{Flags: "KEA", Config: ConfigWarn, OnError: errs.report}, nil)
	if err := <-errs.ch; !errors.Is(err, ErrFlagsMissing) {
		t.Errorf("warn mode: OnError got %v", err)
	}
}

func TestUnsupportedFlagOnThisServer(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	info, err := rdb.Info(context.Background(), "server").Result()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(info, "redis_version:7.") && !strings.Contains(info, "redis_version:6.") {
		t.Skipf("server is not Redis 6/7: %s", strings.SplitN(info, "redis_version:", 2)[1][:8])
	}
	for _, flags := range []string{"KEo", "Kc", "KEAoc"} {
		m, err := NewManager(rdb, Options{Flags: flags})
		if err != nil {
			t.Fatalf("NewManager(%q): %v", flags, err)
		}
		err = m.Start(context.Background())
		if !errors.Is(err, ErrUnsupportedFlag) || !strings.Contains(err.Error(), "8.2") {
			t.Errorf("Start with %q = %v, want ErrUnsupportedFlag mentioning 8.2", flags, err)
		}
	}
	if v := configValue(t, rdb); v != "" {
		t.Errorf("a failed Start changed the setting to %q", v)
	}
}

func TestSurvivesKilledSubscriberWithGap(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	ctx := context.Background()
	gaps := make(chan struct{}, 10)
	rec := newRecorder()
	m := startManager(t, rdb, Options{OnGap: func() { gaps <- struct{}{} }}, func(m *Manager) {
		m.Handle("k:*", rec.handle)
	})
	rdb.Set(ctx, "k:before", "1", 0)
	rec.until(t, "k:before", "")
	n, err := rdb.ClientKillByFilter(ctx, "TYPE", "pubsub").Result()
	if err != nil || n != 1 {
		t.Fatalf("CLIENT KILL TYPE pubsub = %d, %v", n, err)
	}
	select {
	case <-gaps:
	case <-time.After(10 * time.Second):
		t.Fatal("no OnGap within 10s of the killed connection")
	}
	rdb.Set(ctx, "k:after", "1", 0)
	rec.until(t, "k:after", "")
	if s := m.Stats(); s.Reconnects < 1 || s.Gaps != 1 {
		t.Errorf("Stats = %+v, want a reconnect and one gap", s)
	}
}

func TestServerRestartReappliesConfig(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	ctx := context.Background()
	gaps := make(chan struct{}, 10)
	rec := newRecorder()
	startManager(t, rdb, Options{Flags: "K$", OnGap: func() { gaps <- struct{}{} }}, func(m *Manager) {
		m.Handle("k:*", rec.handle)
	})
	srv.Restart() // the setting is lost: nothing is persisted
	select {
	case <-gaps:
	case <-time.After(15 * time.Second):
		t.Fatal("no OnGap within 15s of the restart")
	}
	if v := configValue(t, rdb); parseServerFlags(v)&(flagKeyspace|flagString) != flagKeyspace|flagString {
		t.Fatalf("after restart the setting is %q: not re-applied", v)
	}
	rdb.Set(ctx, "k:after", "1", 0)
	rec.until(t, "k:after", EventSet)
}

func TestPeriodicCheckRepairsRemovedFlags(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	ctx := context.Background()
	gaps := make(chan struct{}, 10)
	startManager(t, rdb, Options{Flags: "Kx", CheckInterval: 50 * time.Millisecond, OnGap: func() { gaps <- struct{}{} }}, nil)
	if err := rdb.ConfigSet(ctx, configParam, "").Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gaps:
	case <-time.After(10 * time.Second):
		t.Fatal("removed flags not detected")
	}
	if v := configValue(t, rdb); parseServerFlags(v) != flagKeyspace|flagExpired {
		t.Errorf("setting after repair: %q", v)
	}
}

// Synthetic notifications on a possibly shared server: ConfigSkip, unique
// key names, PUBLISH only.
func TestOverlappingHandlersEachGetEventOnce(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Addr(t)})
	defer rdb.Close()
	ctx := context.Background()
	prefix := fmt.Sprintf("ksoverlap%d:", time.Now().UnixNano())
	all, users := newRecorder(), newRecorder()
	startManager(t, rdb, Options{Config: ConfigSkip, DB: 9}, func(m *Manager) {
		m.Handle(prefix+"*", all.handle)
		m.Handle(prefix+"user:*", users.handle)
	})
	pub := func(key string) { rdb.Publish(ctx, "__keyspace@9__:"+prefix+key, "set") }
	pub("user:1")
	pub("other")
	pub("user:end")
	if got, want := keysOf(pairs(users.until(t, prefix+"user:end", ""))), []string{prefix + "user:1", prefix + "user:end"}; !equalStrings(got, want) {
		t.Errorf("user handler got %q, want %q", got, want)
	}
	if got, want := keysOf(pairs(all.until(t, prefix+"user:end", ""))), []string{prefix + "user:1", prefix + "other", prefix + "user:end"}; !equalStrings(got, want) {
		t.Errorf("catch-all handler got %q, want %q", got, want)
	}
}

// The server, not only the local matcher, treats an escaped prefix
// literally.
func TestEscapedPrefixOnRealRedis(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Addr(t)})
	defer rdb.Close()
	ctx := context.Background()
	prefix := fmt.Sprintf("ksesc%d:", time.Now().UnixNano())
	rec := newRecorder()
	startManager(t, rdb, Options{Config: ConfigSkip, DB: 9}, func(m *Manager) {
		m.Handle(PrefixPattern(prefix+"x[1]*:"), rec.handle)
	})
	for _, key := range []string{"x1*:a", "x[1]:b", "x[1]*:c"} {
		rdb.Publish(ctx, "__keyspace@9__:"+prefix+key, "set")
	}
	if got := keysOf(pairs(rec.until(t, prefix+"x[1]*:c", ""))); !equalStrings(got, []string{prefix + "x[1]*:c"}) {
		t.Errorf("got %q, want only the literal prefix's key", got)
	}
}

// Managers merging different flags into one server at the same time:
// CONFIG has no compare-and-set, so one write can undo another that was
// read back already; the read-back retry and the periodic check make the
// server end up with all of them.
func TestConcurrentMergesKeepBothFlags(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	flags := []string{"Kx", "El", "K$", "Eh"}
	errc := make(chan error, len(flags))
	managers := make([]*Manager, len(flags))
	for i, f := range flags {
		m, err := NewManager(rdb, Options{Flags: f, CheckInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		managers[i] = m
	}
	for _, m := range managers {
		go func() { errc <- m.Start(context.Background()) }()
	}
	for range managers {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	want := parseServerFlags("KExl$h")
	waitFor(t, "all flags on the server", func() bool {
		return parseServerFlags(configValue(t, rdb))&want == want
	})
	for _, m := range managers {
		closeManager(t, m)
	}
}
