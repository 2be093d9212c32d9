package redisleak

import (
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

// FindHeld returns the holds VerifyNone would fail on: every current hold
// that is not long-lived, whatever its duration, after waiting up to the
// configured time for them to end.
func FindHeld(tr *Tracker, opts ...VerifyOption) []Leak {
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
	held := FindHeld(tr, opts...)
	if len(held) == 0 {
		return
	}
	lines := make([]string, len(held))
	for i, h := range held {
		lines[i] = "  " + h.String()
	}
	t.Errorf("redisleak: found %d leaked redis connection hold(s):\n%s", len(held), strings.Join(lines, "\n"))
}
