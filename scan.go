// The leak scan and its reports: sites, the WARN/INFO log, OnLeak, metrics,
// ActionClose; Holds lists every hold the same way without reporting.

package redisleak

import (
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"
)

// resolveSites fills Site (and Stack) of holds from captured program
// counters or, for commands in flight, from the goroutine profile (stuckSites).
//
// With profile false, only sites known without a goroutine profile are
// filled: captured program counters, and the site a hold was reported with.
func (t *Tracker) resolveSites(views []holdView, leaks []Leak, profile bool) {
	var want []*connRecord
	idx := make(map[*connRecord]int)
	for i, v := range views {
		r := v.rec
		var pcs []uintptr
		r.mu.Lock()
		if c := r.cold; c != nil {
			if v.kind == KindPubSub {
				pcs = c.dialPCs
			} else if c.siteSeq == v.seq && len(c.sitePCs) > 0 {
				pcs = append([]uintptr(nil), c.sitePCs...)
			}
		}
		r.mu.Unlock()
		if len(pcs) > 0 {
			leaks[i].Site, leaks[i].Stack = sitesFromPCs(pcs, t.opts.FullStacks)
		}
		if leaks[i].Site == "" && !profile && r.reportedSeq.Load() == v.seq {
			if lr := r.reported(); lr != nil {
				leaks[i].Site, leaks[i].Stack = lr.Site, lr.Stack
			}
		}
		if leaks[i].Site == "" && r.conn != nil && profile {
			want = append(want, r)
			idx[r] = i
		}
	}
	if len(want) == 0 {
		return
	}
	for r, si := range stuckSites(want, t.opts.FullStacks) {
		i := idx[r]
		leaks[i].Site = si.site
		leaks[i].IdleFor = 0 // its goroutine is in the connection's I/O: a command runs
		if t.opts.FullStacks {
			leaks[i].Stack = si.stack
		}
	}
}

// Scan runs a leak scan now. Leaks not reported before are reported exactly
// as by the background scan (log, OnLeak, metrics, action). It returns every
// current leak, newest reports included, longest hold first. After Close it
// returns nil.
func (t *Tracker) Scan() []Leak { return t.scan(false) }

// scan runs a scan; the background scan (background) hands OnLeak calls to
// the callback goroutine, Scan makes them itself.
func (t *Tracker) scan(background bool) []Leak {
	if t.closed.Load() {
		return nil
	}
	t.scanMu.Lock()
	t.reconcileAnon()
	now := t.now()

	var current []Leak
	var freshViews, autoViews []holdView
	for _, r := range t.snapshotRecords() {
		v, ok := t.evaluate(r, now)
		if ok && v.by == LongLivedAuto && r.autoSeq.Load() != v.seq {
			autoViews = append(autoViews, v)
		}
		if !ok || !v.leaked {
			continue
		}
		if r.reportedSeq.Load() == v.seq {
			var l Leak
			if lr := r.reported(); lr != nil {
				l = *lr
			}
			l.HeldFor, l.IdleFor = v.held, v.idleFor(now)
			current = append(current, l)
			continue
		}
		freshViews = append(freshViews, v)
	}
	fresh := make([]Leak, len(freshViews))
	for i, v := range freshViews {
		fresh[i] = t.leakOf(v, now)
	}
	t.resolveSites(freshViews, fresh, true)
	for i, v := range freshViews {
		r := v.rec
		l := fresh[i]
		r.mu.Lock()
		r.coldLocked().lastReported = &l
		r.mu.Unlock()
		r.reportedSeq.Store(v.seq)
	}
	fresh = append(fresh, t.scanInflight(now)...)
	t.act(freshViews, fresh)
	current = append(current, fresh...)
	sort.Slice(current, func(i, j int) bool { return current[i].HeldFor > current[j].HeldFor })

	if len(fresh) > 0 {
		t.leaksTotal.Add(uint64(len(fresh)))
		t.metrics.addLeaks(fresh)
		t.logLeaks(fresh, current)
	} else if len(current) > 0 && t.opts.RepeatWarning > 0 && time.Since(t.lastReminder) >= t.opts.RepeatWarning {
		t.lastReminder = time.Now()
		t.opts.Logger.Warn("redisleak: leaked redis connections still held",
			slog.Int("leakedCount", len(current)),
			slog.Float64("maxHoldTimeMs", ms(current[0].HeldFor)),
			slog.String("longest", current[0].String()))
	}
	t.announceAuto(autoViews, now)
	t.scanMu.Unlock()
	// OnLeak runs outside the scan lock: it may call Scan, Stats or Holds.
	if t.opts.OnLeak != nil && len(fresh) > 0 {
		if background {
			t.callbacks.push(fresh)
		} else {
			for _, l := range fresh {
				t.callOnLeak(l)
			}
		}
	}
	return current
}

// announceAuto logs, once per site, holds first classified long-lived by
// behaviour. Called with scanMu held.
func (t *Tracker) announceAuto(views []holdView, now int64) {
	if len(views) == 0 {
		return
	}
	ls := make([]Leak, len(views))
	for i, v := range views {
		ls[i] = t.leakOf(v, now)
	}
	t.resolveSites(views, ls, false)
	for i, v := range views {
		v.rec.autoSeq.Store(v.seq)
		key := string(ls[i].Kind) + " " + ls[i].Owner + " " + ls[i].Site
		if t.autoSites == nil {
			t.autoSites = map[string]bool{}
		}
		if t.autoSites[key] || len(t.autoSites) >= 1024 {
			continue
		}
		t.autoSites[key] = true
		t.opts.Logger.Warn("redisleak: connection holder classified long-lived by behaviour (it keeps running commands); mark it with WithLongLived at its site to make this explicit",
			slog.String("kind", string(ls[i].Kind)),
			slog.String("owner", ls[i].Owner),
			slog.String("site", ls[i].Site),
			slog.Float64("heldForMs", ms(ls[i].HeldFor)),
			slog.Float64("idleForMs", ms(ls[i].IdleFor)))
	}
}

func (t *Tracker) logLeaks(fresh, current []Leak) {
	t.lastReminder = time.Now()
	var maxHeld time.Duration // over the leaks this line reports
	for _, l := range fresh {
		if l.HeldFor > maxHeld {
			maxHeld = l.HeldFor
		}
	}
	attrs := []any{
		slog.Int("leakedCount", len(current)),
		slog.Int("newCount", len(fresh)),
		slog.Float64("maxHoldTimeMs", ms(maxHeld)),
	}
	for i, l := range fresh {
		attrs = append(attrs, slog.Group(fmt.Sprintf("leak%d", i),
			slog.Uint64("connId", l.ConnID),
			slog.String("kind", string(l.Kind)),
			slog.String("owner", l.Owner),
			slog.String("pool", l.Pool),
			slog.String("addr", l.Addr),
			slog.String("site", l.Site),
			slog.Time("acquiredAt", l.AcquiredAt),
			slog.Float64("heldForMs", ms(l.HeldFor)),
			slog.Float64("idleForMs", ms(l.IdleFor)),
			slog.Float64("maxHoldMs", ms(l.MaxHold)),
			slog.Bool("closed", l.Closed),
		))
	}
	t.opts.Logger.Warn("redisleak: redis connection leak detected", attrs...)
}

// act applies Options.Action to newly found leaks.
func (t *Tracker) act(views []holdView, fresh []Leak) {
	if t.opts.Action != ActionClose {
		return
	}
	usage := t.poolUsage()
	for i, v := range views {
		r := v.rec
		if r.conn == nil {
			continue
		}
		if t.opts.CloseAbove > 0 && usage[r.pool()] <= t.opts.CloseAbove {
			continue
		}
		_ = r.conn.Conn.Close()
		r.actionClosed.Store(true)
		t.closedLeaks.Add(1)
		fresh[i].Closed = true
		r.mu.Lock()
		if c := r.cold; c != nil && c.lastReported != nil {
			l := *c.lastReported
			l.Closed = true
			c.lastReported = &l
		}
		r.mu.Unlock()
	}
}

// poolUsage returns in-use / PoolSize per pool name.
func (t *Tracker) poolUsage() map[string]float64 {
	used := map[string]int{}
	for _, r := range t.snapshotRecords() {
		if r.state.Load() == stUsed {
			used[r.pool()]++
		}
	}
	size := t.poolSize()
	out := make(map[string]float64, len(used))
	for p, n := range used {
		if size > 0 {
			out[p] = float64(n) / float64(size)
		}
	}
	return out
}

func (t *Tracker) poolSize() int {
	switch c := t.client.(type) {
	case *redis.Client:
		return c.Options().PoolSize
	case *redis.ClusterClient:
		return c.Options().PoolSize
	case *redis.Ring:
		return c.Options().PoolSize
	}
	return 0
}

// Holds returns every current hold (leaked or not), longest first. Sites are
// resolved as for leaks. Useful in tests and debugging; it does not report.
func (t *Tracker) Holds() []Leak { return t.listHolds(nil, -1, true) }

// listHolds returns the current holds that keep passes (nil: all), longest
// first, with sites resolved for the first withSites of them (-1: all).
// Resolving the site of a command in flight takes a goroutine profile
// (profile): callers on a latency-sensitive path pass false and get the
// sites known without one.
func (t *Tracker) listHolds(keep func(holdView) bool, withSites int, profile bool) []Leak {
	if t.closed.Load() {
		return nil
	}
	now := t.now()
	var views []holdView
	for _, r := range t.snapshotRecords() {
		if v, ok := t.evaluate(r, now); ok && (keep == nil || keep(v)) {
			views = append(views, v)
		}
	}
	sort.Slice(views, func(i, j int) bool { return views[i].held > views[j].held })
	out := make([]Leak, len(views))
	for i, v := range views {
		out[i] = t.leakOf(v, now)
	}
	n := len(views)
	if withSites >= 0 && withSites < n {
		n = withSites
	}
	t.resolveSites(views[:n], out[:n], profile)
	return out
}
