package redisleak

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// TestingT is the subset of testing.TB that VerifyNone uses.
type TestingT interface {
	Helper()
	Errorf(format string, args ...any)
}

// VerifyOption tunes VerifyNone.
type VerifyOption func(*verifyConfig)

type verifyConfig struct {
	wait   time.Duration
	ignore map[string]bool
}

// VerifyWait sets how long VerifyNone waits for holds to end before it
// fails (default 1s): holds that end in the meantime are not leaks.
func VerifyWait(d time.Duration) VerifyOption {
	return func(c *verifyConfig) { c.wait = d }
}

// IgnoreOwner makes VerifyNone ignore holds of the named owner.
func IgnoreOwner(owner string) VerifyOption {
	return func(c *verifyConfig) { c.ignore[owner] = true }
}

// findHeld returns the holds VerifyNone would fail on: every current hold
// that is not long-lived, whatever its duration, after waiting up to the
// configured time for them to end.
func findHeld(tr *Tracker, opts ...VerifyOption) []Leak {
	cfg := verifyConfig{wait: time.Second, ignore: map[string]bool{}}
	for _, o := range opts {
		o(&cfg)
	}
	deadline := time.Now().Add(cfg.wait)
	backoff := time.Millisecond
	for {
		var held []Leak
		for _, h := range tr.Holds() {
			if h.LongLived || cfg.ignore[h.Owner] {
				continue
			}
			held = append(held, h)
		}
		if len(held) == 0 || time.Now().After(deadline) {
			return held
		}
		time.Sleep(backoff)
		if backoff < 50*time.Millisecond {
			backoff *= 2
		}
	}
}

// VerifyNone fails the test if the tracker still sees connections held that
// are not long-lived, like goleak.VerifyNone for goroutines: call it (or
// defer it) at the end of a test. It names each hold with its acquisition
// site. Holds still running are given VerifyWait (1s) to end.
func VerifyNone(t TestingT, tr *Tracker, opts ...VerifyOption) {
	t.Helper()
	held := findHeld(tr, opts...)
	if len(held) == 0 {
		return
	}
	lines := make([]string, len(held))
	for i, h := range held {
		lines[i] = "  " + h.String()
	}
	t.Errorf("redisleak: found %d leaked redis connection hold(s):\n%s", len(held), strings.Join(lines, "\n"))
}

// TestingM is the subset of *testing.M that VerifyTestMain uses.
type TestingM interface {
	Run() int
}

// VerifyTestMain runs the tests of a package, then fails (exit code 1) if
// tr still sees connections held that are not long-lived, as goleak's
// VerifyTestMain does for goroutines. Use it in TestMain with a tracker on
// the client the package's tests share:
//
//	func TestMain(m *testing.M) {
//		rdb := redis.NewClient(...)
//		tr, _ := redisleak.Instrument(rdb, redisleak.Options{})
//		redisleak.VerifyTestMain(m, tr)
//	}
//
// It calls os.Exit.
func VerifyTestMain(m TestingM, tr *Tracker, opts ...VerifyOption) {
	os.Exit(verifyTestMain(m, tr, os.Stderr, opts...))
}

func verifyTestMain(m TestingM, tr *Tracker, w io.Writer, opts ...VerifyOption) int {
	code := m.Run()
	if code != 0 {
		return code
	}
	held := findHeld(tr, opts...)
	if len(held) == 0 {
		return 0
	}
	fmt.Fprintf(w, "redisleak: found %d leaked redis connection hold(s) after the tests:\n", len(held))
	for _, h := range held {
		fmt.Fprintf(w, "  %s\n", h)
	}
	return 1
}
