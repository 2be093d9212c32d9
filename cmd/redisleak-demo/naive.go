package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/redisleak/redisleak"
)

// naiveDetector is what -mark-long-lived=false shows: a detector that knows
// one rule, the age rule. Every hold longer than maxHold is a leak, whatever
// the tracker says about it being long-lived (marked with
// redisleak.WithLongLived, or a PubSub connection, or a blocking command
// within its timeout). It reads the tracker's holds (Tracker.Holds), so it
// sees exactly the connections the tracker sees, with the same owners and
// sites; only the verdict differs. The tracker itself runs unchanged
// underneath: /health/redis-pool and /metrics keep its verdict.
type naiveDetector struct {
	maxHold time.Duration
	log     *slog.Logger

	mu       sync.Mutex
	seen     map[holdKey]bool
	reported []redisleak.Leak
}

// holdKey names one hold: a connection and when the hold began.
type holdKey struct {
	conn uint64
	at   int64
}

func newNaiveDetector(maxHold time.Duration, log *slog.Logger) *naiveDetector {
	return &naiveDetector{maxHold: maxHold, log: log, seen: map[holdKey]bool{}}
}

// judge returns holds with the naive verdict: Leaked when older than
// maxHold, never LongLived.
func (d *naiveDetector) judge(holds []redisleak.Leak) []redisleak.Leak {
	out := make([]redisleak.Leak, len(holds))
	for i, h := range holds {
		h.LongLived, h.LongLivedBy = false, ""
		h.MaxHold = d.maxHold
		h.Leaked = h.HeldFor > d.maxHold
		out[i] = h
	}
	return out
}

// leaks returns the naive leaks among holds.
func (d *naiveDetector) leaks(holds []redisleak.Leak) []redisleak.Leak {
	var out []redisleak.Leak
	for _, h := range d.judge(holds) {
		if h.Leaked {
			out = append(out, h)
		}
	}
	return out
}

// scan reports (logs and remembers) each naive leak once per hold.
func (d *naiveDetector) scan(holds []redisleak.Leak) {
	for _, l := range d.leaks(holds) {
		k := holdKey{conn: l.ConnID, at: l.AcquiredAt.UnixNano()}
		d.mu.Lock()
		seen := d.seen[k]
		d.seen[k] = true
		if !seen {
			d.reported = append(d.reported, l)
		}
		d.mu.Unlock()
		if !seen {
			d.log.Warn("naive detector: redis connection held longer than max hold",
				slog.Uint64("connId", l.ConnID), slog.String("kind", string(l.Kind)), slog.String("owner", l.Owner),
				slog.String("site", l.Site), slog.Float64("heldMs", float64(l.HeldFor)/float64(time.Millisecond)),
				slog.Duration("maxHold", d.maxHold))
		}
	}
}

// run scans the tracker's holds every interval until ctx ends.
func (d *naiveDetector) run(ctx context.Context, tr *redisleak.Tracker, interval time.Duration) {
	tk := time.NewTicker(interval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			d.scan(tr.Holds())
		}
	}
}

// reports returns every leak reported so far.
func (d *naiveDetector) reports() []redisleak.Leak {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]redisleak.Leak(nil), d.reported...)
}

// stats is st with the naive verdict: nothing long-lived, every hold older
// than maxHold leaked, the naive reports counted.
func (d *naiveDetector) stats(st redisleak.Stats, holds []redisleak.Leak) redisleak.Stats {
	st.LongLived, st.AutoLongLived = 0, 0
	st.Leaked = len(d.leaks(holds))
	d.mu.Lock()
	st.LeaksReported = uint64(len(d.reported))
	d.mu.Unlock()
	return st
}
