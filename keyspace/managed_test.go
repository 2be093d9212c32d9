package keyspace

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
)

// Managed Redis: CONFIG renamed away, or an ACL user without (some of) it.

// countingSink counts the OnError reports that match.
type countingSink struct {
	mu   sync.Mutex
	errs []error
}

func (s *countingSink) report(err error) {
	s.mu.Lock()
	s.errs = append(s.errs, err)
	s.mu.Unlock()
}

func (s *countingSink) count(target error) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, err := range s.errs {
		if errors.Is(err, target) {
			n++
		}
	}
	return n
}

func (s *countingSink) all() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]error(nil), s.errs...)
}

// aclUser creates user app (password pw) on a private server with the given
// ACL rules after "on >pw ~* &*", and returns a client logged in as app.
func aclUser(t *testing.T, srv *redistest.Server, admin *redis.Client, rules ...string) *redis.Client {
	t.Helper()
	args := []any{"ACL", "SETUSER", "app", "reset", "on", ">pw", "~*", "&*"}
	for _, r := range rules {
		args = append(args, r)
	}
	if err := admin.Do(context.Background(), args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	return srv.Client(func(o *redis.Options) { o.Username, o.Password = "app", "pw" })
}

// TestMergeStartsWhereConfigIsRenamed: CONFIG renamed away, flags set by the
// operator: the default (merge) starts, says once that it cannot verify, and
// delivers events.
func TestMergeStartsWhereConfigIsRenamed(t *testing.T) {
	srv := redistest.Private(t, redistest.PrivateOptions{Args: []string{
		"--notify-keyspace-events", "K$", "--rename-command", "CONFIG", ""}})
	rdb := srv.Client()
	errs := &countingSink{}
	rec := newRecorder()
	m, err := NewManager(rdb, Options{Flags: "K$", CheckInterval: 20 * time.Millisecond, OnError: errs.report})
	if err != nil {
		t.Fatal(err)
	}
	m.Handle("r:*", rec.handle)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatalf("Start with CONFIG renamed and the flags set: %v", err)
	}
	t.Cleanup(func() { closeManager(t, m) })
	rdb.Set(ctx, "r:1", "v", 0)
	rec.until(t, "r:1", EventSet)
	time.Sleep(500 * time.Millisecond) // about 25 periodic checks
	if n := errs.count(ErrConfigUnavailable); n != 1 {
		t.Errorf("ErrConfigUnavailable reported %d times in 25 checks, want once: %v", n, errs.all())
	}
}

// TestMergeWithACLUser: an ACL user that may read but not set CONFIG starts
// where the flags are there (verified), and gets ErrConfigUnavailable naming
// the missing flags where they are not; one without CONFIG at all starts.
func TestMergeWithACLUser(t *testing.T) {
	srv := redistest.Private(t, redistest.PrivateOptions{Args: []string{"--notify-keyspace-events", "K$"}})
	admin := srv.Client()
	ctx := context.Background()

	t.Run("config-get-only", func(t *testing.T) {
		app := aclUser(t, srv, admin, "+@all", "-config", "+config|get")
		errs := &countingSink{}
		startManager(t, app, Options{Flags: "K$", OnError: errs.report}, nil)
		if got := errs.all(); len(got) != 0 {
			t.Errorf("flags present and verified, yet OnError got %v", got)
		}
		m, err := NewManager(app, Options{Flags: "K$xg"})
		if err != nil {
			t.Fatal(err)
		}
		err = m.Start(ctx)
		t.Logf("Start needing K$xg on a K$ server without CONFIG SET: %v", err)
		if !errors.Is(err, ErrConfigUnavailable) || !strings.Contains(err.Error(), `missing "gx"`) {
			t.Errorf("Start = %v, want ErrConfigUnavailable naming the missing flags (missing \"gx\")", err)
		}
	})

	t.Run("no-config", func(t *testing.T) {
		app := aclUser(t, srv, admin, "+@all", "-config")
		errs := &countingSink{}
		rec := newRecorder()
		startManager(t, app, Options{Flags: "K$", CheckInterval: 20 * time.Millisecond, OnError: errs.report}, func(m *Manager) {
			m.Handle("a:*", rec.handle)
		})
		admin.Set(ctx, "a:1", "v", 0)
		rec.until(t, "a:1", EventSet)
		time.Sleep(300 * time.Millisecond)
		if n := errs.count(ErrConfigUnavailable); n != 1 {
			t.Errorf("ErrConfigUnavailable reported %d times, want once: %v", n, errs.all())
		}
	})
}

// TestCannotVerifyReportedOncePerState: in verify and warn modes, "cannot
// verify" is reported once, not at every check, and again only after the
// state changed (CONFIG allowed, then denied again).
func TestCannotVerifyReportedOncePerState(t *testing.T) {
	for _, mode := range []ConfigMode{ConfigVerify, ConfigWarn} {
		t.Run(mode.String(), func(t *testing.T) {
			srv := redistest.Private(t, redistest.PrivateOptions{Args: []string{"--notify-keyspace-events", "K$"}})
			admin := srv.Client()
			ctx := context.Background()
			app := aclUser(t, srv, admin, "+@all", "-config")
			errs := &countingSink{}
			startManager(t, app, Options{Flags: "K$", Config: mode, CheckInterval: 20 * time.Millisecond, OnError: errs.report}, nil)
			// Wait for checks by the server's count of CONFIG GET calls
			// (done or refused): the machine may be slow.
			waitChecks := func(what string, n int) {
				t.Helper()
				from := configGetCalls(t, admin)
				redistest.WaitFor(t, 20*time.Second, what, func() bool { return configGetCalls(t, admin) >= from+n })
			}
			waitChecks("25 refused checks", 25)
			first := errs.count(ErrConfigUnavailable)
			// Allowed: verified, nothing to report.
			if err := admin.Do(ctx, "ACL", "SETUSER", "app", "+config|get").Err(); err != nil {
				t.Fatal(err)
			}
			waitChecks("15 checks allowed", 15)
			allowed := errs.count(ErrConfigUnavailable)
			// Denied again: a new state, reported once more.
			if err := admin.Do(ctx, "ACL", "SETUSER", "app", "-config|get").Err(); err != nil {
				t.Fatal(err)
			}
			waitChecks("15 checks refused again", 15)
			again := errs.count(ErrConfigUnavailable)
			t.Logf("%v: cannot-verify reports: %d in 25 refused checks, %d after 15 allowed, %d after 15 refused again", mode, first, allowed, again)
			if first != 1 || allowed != 1 || again != 2 {
				t.Errorf("cannot-verify reported %d, %d, %d times, want 1, 1, 2: %v", first, allowed, again, errs.all())
			}
		})
	}
}

// configGetCalls is the number of CONFIG GET calls the server executed or
// refused (INFO commandstats).
func configGetCalls(t *testing.T, admin *redis.Client) int {
	t.Helper()
	info, err := admin.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(info, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_config|get:")
		if !ok {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(f, "=")
			if k == "calls" || k == "rejected_calls" {
				c, _ := strconv.Atoi(v)
				n += c
			}
		}
	}
	return n
}
