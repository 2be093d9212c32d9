package redisleak

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Leak describes a connection hold: a leak when returned by Scan or passed
// to OnLeak; any current hold when returned by Holds. It is a value: it does
// not change after it was made.
type Leak struct {
	ConnID     uint64        // the tracker's id of the dialed connection (0 in hooks mode)
	Kind       string        // KindCommand, KindPipeline, KindTx, KindConn, KindPubSub, KindBlocking
	Owner      string        // set with WithOwner, or ""
	Pool, Addr string        // go-redis pool name and server address
	Site       string        // acquiring call site, "file.go:123 pkg.Func", or "" when unknown
	AcquiredAt time.Time     // when the hold started
	HeldFor    time.Duration // how long it had lasted when observed
	MaxHold    time.Duration // the threshold that applied
	LongLived  bool          // exempt: marked or recognised long-lived
	Leaked     bool          // over its threshold and not long-lived
	Closed     bool          // closed by ActionClose
	Stack      []string      // the acquisition stack, with Options.FullStacks

	// IdleFor is how long the connection has run no command: the time since
	// its last command was sent or its reply awaited (go-redis's own
	// last-use time, which it keeps to within 50 ms). It is 0 while a
	// command is known to run (a blocking command awaiting its reply, or a
	// command found in I/O when the site was resolved).
	IdleFor time.Duration
	// LongLivedBy says why a hold is exempt: "" (not exempt), LongLivedMark
	// (WithLongLived), LongLivedPubSub, LongLivedBlocking (a blocking
	// command within its own timeout) or LongLivedAuto (it keeps running
	// commands; Options.AutoLongLived).
	LongLivedBy string
}

// Reasons a hold is exempt, as in Leak.LongLivedBy.
const (
	LongLivedMark     = "mark"
	LongLivedPubSub   = "pubsub"
	LongLivedBlocking = "blocking"
	LongLivedAuto     = "auto"
)

// String returns one line that names the hold and its acquisition site.
func (l Leak) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "redis connection %d (%s", l.ConnID, l.Kind)
	if l.Owner != "" {
		fmt.Fprintf(&b, ", owner %q", l.Owner)
	}
	fmt.Fprintf(&b, ") to %s held for %v", orUnknown(l.Addr), l.HeldFor.Round(time.Millisecond))
	switch {
	case l.LongLived && l.LongLivedBy != "":
		fmt.Fprintf(&b, " (long-lived: %s)", longLivedWhy(l.LongLivedBy))
	case l.LongLived:
		b.WriteString(" (long-lived)")
	case l.MaxHold > 0:
		fmt.Fprintf(&b, " (limit %v", l.MaxHold)
		if l.IdleFor > 0 && l.IdleFor < l.HeldFor {
			fmt.Fprintf(&b, ", idle %v", l.IdleFor.Round(time.Millisecond))
		}
		b.WriteByte(')')
	}
	fmt.Fprintf(&b, ", acquired at %s", orUnknown(l.Site))
	if l.Pool != "" {
		fmt.Fprintf(&b, " [pool %s]", l.Pool)
	}
	return b.String()
}

func longLivedWhy(by string) string {
	switch by {
	case LongLivedMark:
		return "marked with WithLongLived"
	case LongLivedPubSub:
		return "a PubSub connection"
	case LongLivedBlocking:
		return "a blocking command within its timeout"
	case LongLivedAuto:
		return "keeps running commands"
	}
	return by
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// MarshalJSON encodes durations in milliseconds.
func (l Leak) MarshalJSON() ([]byte, error) {
	return json.Marshal(leakJSON{
		ConnID: l.ConnID, Kind: l.Kind, Owner: l.Owner, Pool: l.Pool, Addr: l.Addr,
		Site: l.Site, AcquiredAt: l.AcquiredAt, HeldForMs: ms(l.HeldFor), MaxHoldMs: ms(l.MaxHold),
		LongLived: l.LongLived, Leaked: l.Leaked, Closed: l.Closed, Stack: l.Stack,
		IdleForMs: ms(l.IdleFor), LongLivedBy: l.LongLivedBy,
	})
}

type leakJSON struct {
	ConnID      uint64    `json:"connId"`
	Kind        string    `json:"kind"`
	Owner       string    `json:"owner,omitempty"`
	Pool        string    `json:"pool,omitempty"`
	Addr        string    `json:"addr,omitempty"`
	Site        string    `json:"site,omitempty"`
	AcquiredAt  time.Time `json:"acquiredAt"`
	HeldForMs   float64   `json:"heldForMs"`
	MaxHoldMs   float64   `json:"maxHoldMs,omitempty"`
	LongLived   bool      `json:"longLived,omitempty"`
	Leaked      bool      `json:"leaked,omitempty"`
	Closed      bool      `json:"closed,omitempty"`
	Stack       []string  `json:"stack,omitempty"`
	IdleForMs   float64   `json:"idleForMs"`
	LongLivedBy string    `json:"longLivedBy,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// holdView is one record's evaluation at a point in time.
type holdView struct {
	rec       *connRecord
	seq       uint64
	held      time.Duration
	threshold time.Duration
	kind      string
	owner     string
	longLived bool
	leaked    bool
	by        string        // Leak.LongLivedBy
	idle      time.Duration // Leak.IdleFor; -1 until computed (idleFor)
}

// evaluate classifies a record's current hold; ok is false when it is not
// held.
func (t *Tracker) evaluate(r *connRecord, now int64) (v holdView, ok bool) {
	if r.state.Load() != stUsed {
		return v, false
	}
	acq := r.acquiredAt.Load()
	v.rec = r
	v.seq = r.holdSeq.Load()
	v.held = time.Duration(now - acq)
	v.kind = r.kind()
	legacyUntil := int64(0)
	if r.conn == nil && v.kind != KindPubSub && r.blockDeadline.Load() == 0 {
		// no wrapper: a blocking command noted by the hook (hooks.go)
		if u, ok := t.legacyBlock.Load(r.holderG.Load()); ok {
			v.kind, legacyUntil = KindBlocking, u.(int64)
		}
	}
	m := r.mark.Load()
	if m == nil && v.kind == KindPubSub {
		m = r.dialMark
	}
	if m != nil {
		v.owner = m.owner
		if m.longLived {
			v.longLived, v.by = true, LongLivedMark
		}
	}
	if v.kind == KindPubSub && r.dialMark != nil {
		if v.owner == "" {
			v.owner = r.dialMark.owner
		}
		if r.dialMark.longLived && !v.longLived {
			v.longLived, v.by = true, LongLivedMark
		}
	}
	v.threshold = t.threshold(v.kind, m)
	v.idle = -1 // computed below when the behaviour rule needs it, else by leakOf
	if !v.longLived {
		switch v.kind {
		case KindPubSub:
			v.longLived, v.by = true, LongLivedPubSub
		case KindBlocking:
			bd := r.blockDeadline.Load()
			if legacyUntil != 0 {
				bd = legacyUntil
			}
			if bd == int64(blockForever) || bd > now {
				v.longLived, v.by = true, LongLivedBlocking
				v.idle = 0 // awaiting its reply
			}
		}
	}
	switch {
	case v.longLived:
	case t.opts.AutoLongLived && v.held > v.threshold:
		// Behaviour: a hold that keeps running commands is long-lived; one
		// idle (or stuck in one command) for its threshold is a leak.
		if v.idle < 0 {
			v.idle = r.idleFor(now, v.held)
		}
		if v.idle > v.threshold {
			v.leaked = true
		} else {
			v.longLived, v.by = true, LongLivedAuto
		}
	default:
		v.leaked = v.held > v.threshold
	}
	return v, true
}

// idleFor returns Leak.IdleFor of the hold.
func (v holdView) idleFor(now int64) time.Duration {
	if v.idle >= 0 {
		return v.idle
	}
	return v.rec.idleFor(now, v.held)
}

// now returns nanotime and refreshes the wall-clock offset idleFor uses.
func (t *Tracker) now() int64 {
	wall := time.Now().UnixNano()
	n := nanotime()
	t.wallOff.Store(wall - n)
	return n
}

func (t *Tracker) threshold(kind string, m *mark) time.Duration {
	if m != nil && m.maxHold > 0 {
		return m.maxHold
	}
	if d, ok := t.opts.KindMaxHold[kind]; ok && d > 0 {
		return d
	}
	return t.opts.MaxHold
}

func (t *Tracker) leakOf(v holdView, now int64) Leak {
	r := v.rec
	site := ""
	if r.pre && v.seq == 1 {
		site = siteBeforeInstrument
	}
	return Leak{
		Site:        site,
		ConnID:      r.id,
		Kind:        v.kind,
		Owner:       v.owner,
		Pool:        r.pool(),
		Addr:        r.addr,
		AcquiredAt:  unixAt(now - int64(v.held)),
		HeldFor:     v.held,
		MaxHold:     v.threshold,
		LongLived:   v.longLived,
		Leaked:      v.leaked,
		LongLivedBy: v.by,
		IdleFor:     v.idleFor(now),
	}
}

// resolveSites fills Site (and Stack) of holds from captured program
// counters or, for commands in flight, from a goroutine dump.
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
		key := ls[i].Kind + " " + ls[i].Owner + " " + ls[i].Site
		if t.autoSites == nil {
			t.autoSites = map[string]bool{}
		}
		if t.autoSites[key] || len(t.autoSites) >= 1024 {
			continue
		}
		t.autoSites[key] = true
		t.opts.Logger.Warn("redisleak: connection holder classified long-lived by behaviour (it keeps running commands); mark it with WithLongLived at its site to make this explicit",
			slog.String("kind", ls[i].Kind),
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
			slog.String("kind", l.Kind),
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

// evaluateOp classifies a command in flight (hooks mode) as evaluate does a
// connection's hold.
func (t *Tracker) evaluateOp(op *inflightOp, now int64) holdView {
	v := holdView{held: time.Duration(now - op.start), kind: KindCommand}
	v.longLived = op.mark != nil && op.mark.longLived
	if op.blocked {
		v.kind = KindBlocking
		if op.block == blockForever || v.held < op.block+t.opts.BlockingGrace {
			v.longLived = true
		}
	}
	v.threshold = t.threshold(v.kind, op.mark)
	v.leaked = !v.longLived && v.held > v.threshold
	return v
}

// scanInflight reports, in hooks mode, commands in flight for too long.
func (t *Tracker) scanInflight(now int64) []Leak {
	if !t.hooksMode.Load() {
		return nil
	}
	var out []Leak
	for _, op := range t.inflightOps() {
		v := t.evaluateOp(op, now)
		if !v.leaked {
			continue
		}
		t.ifMu.Lock()
		if t.reportedOps == nil {
			t.reportedOps = map[*inflightOp]bool{}
		}
		seen := t.reportedOps[op]
		t.reportedOps[op] = true
		t.ifMu.Unlock()
		if seen {
			continue
		}
		l := Leak{Kind: v.kind, AcquiredAt: unixAt(op.start), HeldFor: v.held, MaxHold: v.threshold, Leaked: true}
		if op.mark != nil {
			l.Owner = op.mark.owner
		}
		l.Site, l.Stack = sitesFromPCs(op.pcs, t.opts.FullStacks)
		out = append(out, l)
	}
	return out
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
