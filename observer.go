package redisleak

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// go-redis has one process-wide connection-state observer
// (redis.SetOTelRecorder). The tracker installs one dispatcher there, shared
// by every tracker in the process: it routes each event to the tracker that
// owns the connection (found through the connection's wrapped RemoteAddr).
// With a recorder the user chained through Options.ChainRecorder, what is
// installed is a chained recorder (chain.go) that hands every call to the
// dispatcher and then to the user's recorder. When the last tracker closes,
// the chained recorder (or nil) is put back, so a plain client measured
// afterwards is plain.
//
// The callbacks run inside go-redis's pool lock: they only touch atomics.

type dispatcher struct {
	// slow is non-zero while any callback may need its slow path: it counts
	// each anonymous connection (anonLive), each probe running (probing),
	// and saw being unset. Each share is added before its condition starts
	// and taken back after it ends, so that slow is never zero while one
	// holds: the callbacks' common case reads one word (first in the
	// struct: no explicit nil check).
	slow  atomic.Int64
	mu    sync.Mutex // guards refs, clients and installation
	refs  int
	chain atomic.Pointer[chainBox]
	// prefixes maps a client's base pool name to its tracker, for
	// connections opened before the tracker was attached (no wrapper).
	prefixes atomic.Pointer[map[string]*Tracker]
	// saw is set by the first checkout after a tracker's mode check reset
	// it, and gen counts those: a tracker whose client's pools had checkouts
	// while gen stood still knows that the dispatcher was replaced.
	saw atomic.Bool
	gen atomic.Uint64
	// clients maps each instrumented client to its open tracker.
	clients map[redis.UniversalClient]*Tracker
	// probing is non-zero while a tracker's synchronous probe runs (see
	// probePoolName): only then does RecordPendingRequests look for its
	// goroutine in probes (goroutine → *probeResult).
	probing atomic.Int32
	probes  sync.Map
	// cache maps go-redis connections (by connInfoKey) to their records: a
	// direct-mapped table that every event reads first and only a miss
	// writes, so that the common event finds its record without asking
	// the connection for its address (see lookup).
	cache [cacheSize]atomic.Pointer[connRecord]
	// failed remembers, by goroutine, the pool whose connection request
	// failed last (see failedPool).
	failed [64]atomic.Pointer[failNote]
	// anonLive counts connections that existed before their tracker and have
	// not been identified yet: only then do "-1" count events need a look.
	anonLive atomic.Int64
}

// newDispatcher returns a dispatcher with saw unset (its share of slow).
func newDispatcher() *dispatcher {
	d := &dispatcher{}
	d.slow.Store(1)
	for i := range d.cache {
		d.cache[i].Store(noRecord)
	}
	return d
}

// addAnon counts n connections (n < 0: uncounts them) that existed before
// their tracker and are not identified yet.
func (d *dispatcher) addAnon(n int64) {
	if n > 0 {
		d.slow.Add(n)
		d.anonLive.Add(n)
	} else {
		d.anonLive.Add(n)
		d.slow.Add(n)
	}
}

// unsee unsets saw (see checkMode): the next checkout takes the slow path
// and sets it again.
func (d *dispatcher) unsee() {
	d.slow.Add(1)
	if !d.saw.Swap(false) {
		d.slow.Add(-1) // was unset already: its share is counted
	}
}

type chainBox struct {
	rec       redis.OTelRecorder
	counter   redis.OTelConnectionCounter
	registrar redis.OTelPoolRegistrar
}

var disp = newDispatcher()

var (
	_ redis.OTelRecorder          = (*dispatcher)(nil)
	_ redis.OTelConnectionCounter = (*dispatcher)(nil)
)

var errAlreadyInstrumented = errors.New("redisleak: Instrument: this client already has an open tracker; Close it first")

var errChainConflict = errors.New("redisleak: Options.ChainRecorder differs from the recorder chained by another open tracker")

// attach registers t and installs the dispatcher.
func (d *dispatcher) attach(t *Tracker, chain redis.OTelRecorder) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if other := d.clients[t.client]; other != nil && !other.closed.Load() {
		return errAlreadyInstrumented
	}
	if chain != nil {
		if cur := d.chain.Load(); cur != nil && cur.rec != chain {
			return errChainConflict
		}
		box := &chainBox{rec: chain}
		box.counter, _ = chain.(redis.OTelConnectionCounter)
		box.registrar, _ = chain.(redis.OTelPoolRegistrar)
		d.chain.Store(box)
	}
	if d.clients == nil {
		d.clients = map[redis.UniversalClient]*Tracker{}
	}
	d.clients[t.client] = t
	d.refs++
	// (Re)install every time: another recorder may have replaced us.
	d.install()
	return nil
}

// detach unregisters t; the last one restores the chained recorder or nil.
func (d *dispatcher) detach(t *Tracker) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.forgetPrefixes(t)
	d.uncacheTracker(t)
	if d.clients[t.client] == t {
		delete(d.clients, t.client)
	}
	d.refs--
	if d.refs > 0 {
		return
	}
	d.refs = 0
	// Put back the chained recorder (or none) only while the dispatcher is
	// still installed: a recorder installed after Instrument by someone else
	// (e.g. go-redis's native OTel metrics) is never removed.
	if d.installed() {
		if box := d.chain.Load(); box != nil {
			redis.SetOTelRecorder(box.rec)
		} else {
			redis.SetOTelRecorder(nil)
		}
	}
	d.chain.Store(nil)
}

// install makes the dispatcher go-redis's recorder: itself, or with a
// chained recorder, the chain in front of it. Called with d.mu held.
func (d *dispatcher) install() {
	if box := d.chain.Load(); box != nil {
		redis.SetOTelRecorder(&chained{d: d, box: box})
	} else {
		redis.SetOTelRecorder(d)
	}
}

// probeAddr is the address of the throwaway client of installed: never
// dialed.
const probeAddr = "redisleak.invalid:1"

// installed reports whether the process-wide recorder is still the
// dispatcher. go-redis has no getter: a throwaway client (never dialed)
// starts a request with an already-cancelled context, which go-redis
// announces to the installed recorder before it gives up. Called with d.mu
// held.
func (d *dispatcher) installed() bool {
	c := redis.NewClient(&redis.Options{Addr: probeAddr, MaxRetries: -1, DisableIdentity: true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}})
	defer c.Close()
	return probePoolName(c) != ""
}

func (d *dispatcher) learnPrefix(pool string, t *Tracker) {
	base := basePoolName(pool)
	if base == "" {
		return
	}
	if m := d.prefixes.Load(); m != nil && (*m)[base] == t {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if t.closed.Load() {
		return
	}
	old := d.prefixes.Load()
	n := make(map[string]*Tracker)
	if old != nil {
		for k, v := range *old {
			n[k] = v
		}
	}
	n[base] = t
	d.prefixes.Store(&n)
}

// forgetPrefixes is called with d.mu held.
func (d *dispatcher) forgetPrefixes(t *Tracker) {
	old := d.prefixes.Load()
	if old == nil {
		return
	}
	n := make(map[string]*Tracker)
	for k, v := range *old {
		if v != t {
			n[k] = v
		}
	}
	d.prefixes.Store(&n)
}

// noRecord fills the cache's empty entries, so that a lookup needs no nil
// test: its cnKey (0) matches no connection, and its state is stClosed for
// a nil ConnInfo (key 0).
var noRecord = func() *connRecord {
	r := &connRecord{}
	r.state.Store(stClosed)
	return r
}()

const (
	cacheBits = 10
	cacheSize = 1 << cacheBits
)

// cacheSlot is the cache entry for a go-redis connection at address k: a
// multiplicative (Fibonacci) hash, whose top bits are the slot (three
// instructions, and no bounds check).
func cacheSlot(k uintptr) uintptr { return uintptr(uint64(k) * 0x9E3779B97F4A7C15 >> (64 - cacheBits)) }

// cached returns the record of cn from the cache and the record's state,
// or stClosed (and nil or noRecord) when the cache does not hold it (then
// lookupSlow finds it). It calls nothing, so that it is inlined into the observer's
// callbacks, which compare the state it loaded once. Only records with a
// cnKey (never 0) enter the cache, and they leave it when their connection
// or their tracker closes (uncache, uncacheTracker). A record gets its
// cnKey when it learns its pool (learnPool, legacyRecord): a cached record
// needs no learning.
func (d *dispatcher) cached(cn redis.ConnInfo) (*connRecord, uint32) {
	k := connInfoKey(cn)
	if r := d.cache[cacheSlot(k)].Load(); r.cnKey.Load() == k { // (never nil: noRecord)
		return r, r.state.Load()
	}
	return nil, stClosed
}

// lookup finds the tracker's record of cn, or nil when cn belongs to no
// open tracker: from the cache when it holds cn's record, else through
// the connection (lookupSlow).
func (d *dispatcher) lookup(cn redis.ConnInfo, from uint32) *connRecord {
	if r, st := d.cached(cn); st != stClosed {
		return r
	}
	return d.lookupSlow(cn, from)
}

// lookupSlow is lookup's cache miss: it asks the connection and remembers
// the answer once the record knows its go-redis connection (setInfo).
//
//go:noinline
func (d *dispatcher) lookupSlow(cn redis.ConnInfo, from uint32) *connRecord {
	k := connInfoKey(cn)
	r := d.recordFrom(cn, from)
	if r != nil && k != 0 && r.cnKey.Load() == k {
		e := &d.cache[cacheSlot(k)]
		e.Store(r)
		if r.state.Load() == stClosed || r.tr.closed.Load() {
			e.CompareAndSwap(r, noRecord) // closed meanwhile: its uncache may have run first
		}
	}
	return r
}

// uncache removes r from the cache (its connection closed), so that the
// cache keeps no closed connection alive.
func (d *dispatcher) uncache(r *connRecord) {
	if k := r.cnKey.Load(); k != 0 {
		d.cache[cacheSlot(k)].CompareAndSwap(r, noRecord)
	}
}

// uncacheTracker removes t's records from the cache (t closed), so that
// the cache keeps no closed tracker, nor its client, alive.
func (d *dispatcher) uncacheTracker(t *Tracker) {
	for i := range d.cache {
		if r := d.cache[i].Load(); r.tr == t {
			d.cache[i].CompareAndSwap(r, noRecord)
		}
	}
}

// record finds the tracker's record of cn, or nil when cn belongs to no open
// tracker. Wrapped connections are found by their address type; others
// through their pool's name, for late attachment.
func (d *dispatcher) record(cn redis.ConnInfo) *connRecord { return d.recordFrom(cn, stNew) }

// recordFrom is record for an event that tells the state the connection was
// in before it (see recordSlow).
func (d *dispatcher) recordFrom(cn redis.ConnInfo, from uint32) *connRecord {
	if cn == nil {
		return nil
	}
	a, ok := cn.RemoteAddr().(*trackedAddr)
	if ok && !a.rec.tr.closed.Load() {
		return a.rec
	}
	return d.recordSlow(cn, a, ok, from)
}

// recordSlow finds the record of a connection without an open tracker's
// wrapper. from is the state the connection was in before the event at
// hand (stNew when unknown): a connection that existed before its tracker
// takes over one of the tracker's anonymous records in that state.
func (d *dispatcher) recordSlow(cn redis.ConnInfo, a *trackedAddr, ok bool, from uint32) *connRecord {
	if ok {
		// A client instrumented again after a tracker closed has the closed
		// tracker's (inert) wrapper outside the new one's: look inside.
		for a != nil && a.rec.tr.closed.Load() {
			a, _ = a.Addr.(*trackedAddr)
		}
		if a != nil {
			return a.rec
		}
		// wrapped only by closed trackers: like a connection without wrapper
	}
	m := d.prefixes.Load()
	if m == nil || len(*m) == 0 {
		return nil
	}
	t := (*m)[basePoolName(cn.PoolName())]
	if t == nil || t.closed.Load() {
		return nil
	}
	return t.legacyRecord(cn, from)
}

// RecordConnectionCount is the state-change signal. Of the events of one
// command (-1 idle, +1 used at checkout; -1 used, +1 idle at return) only
// "+1 idle" needs the record: the checkout is taken from
// RecordConnectionWaitTime, which carries the caller's context, and a close
// ends the record through the wrapper. PubSub connections (+1/-1 used,
// isPubSub) have no other signal.
//
// Four calls per command: the common ones make at most one call, last;
// the rest is in count.
func (d *dispatcher) RecordConnectionCount(ctx context.Context, delta int, cn redis.ConnInfo, state string, isPubSub bool) {
	if d.slow.Load() == 0 && !isPubSub {
		if delta > 0 && state == "idle" {
			// a return: the common case here, the rest in returned
			if r, st := d.cached(cn); st == stUsed {
				// r.endUsed(), written out: a call here would cost a frame
				// of its own (TestHoldPathsAgree keeps the two the same)
				held := max(nanotime()-r.acquiredAt.Load(), 0)
				bd := r.blockDeadline.Load()
				kind := r.kindWith(bd)
				r.state.Store(stIdle)
				if bd != 0 {
					r.blockDeadline.Store(0)
				}
				c := &r.tr.holds.kinds[kind]
				if held > c.max.Load() {
					c.raiseMax(held)
				}
				c.buckets[bucketOf(held)&(histBuckets-1)].Add(1)
				if rs := r.reportedSeq.Load(); rs != 0 && rs == r.holdSeq.Load() {
					r.tr.noteReturned(r, held)
				}
			} else {
				d.returned(cn)
			}
		}
		return
	}
	d.count(delta, cn, state == "idle", isPubSub)
}

// count is RecordConnectionCount for PubSub connections, and for any event
// while connections opened before their tracker are not all identified, a
// probe runs, or a mode check reset saw; idle tells the two states apart
// ("idle", "used"). (It takes neither the context nor the state's string:
// a pointer that a callback hands to a call costs a spill on every call.)
//
//go:noinline
func (d *dispatcher) count(delta int, cn redis.ConnInfo, idle, isPubSub bool) {
	if isPubSub {
		d.pubSubCount(delta, cn)
	} else if delta > 0 {
		if idle {
			d.returned(cn)
		}
	} else if d.anonLive.Load() > 0 {
		d.leaving(cn, idle)
	}
}

// returned handles "+1 idle": a return, or a new connection put in the
// pool.
func (d *dispatcher) returned(cn redis.ConnInfo) {
	if r := d.lookup(cn, stNew); r != nil {
		r.returnSlow(cn)
	}
}

// pubSubCount handles a PubSub connection's "+1 used" / "-1 used".
//
//go:noinline
func (d *dispatcher) pubSubCount(delta int, cn redis.ConnInfo) {
	from := stNew
	if delta < 0 {
		from = stUsed
	}
	if r := d.recordFrom(cn, from); r != nil {
		r.onPubSubCount(delta, cn)
	}
}

// leaving handles a "-1" while connections opened before their tracker are
// not all identified: one of them leaves the state it had; it is identified
// now, inside the pool's lock, so that it is never counted both as
// anonymous and as identified.
//
//go:noinline
func (d *dispatcher) leaving(cn redis.ConnInfo, idle bool) {
	if cn == nil {
		return
	}
	if _, wrapped := cn.RemoteAddr().(*trackedAddr); !wrapped {
		from := stUsed
		if idle {
			from = stIdle
		}
		d.recordSlow(cn, nil, false, from)
	}
}

// RecordPendingRequests runs on the caller's goroutine when a request for a
// connection starts (cn nil, delta +1) and ends. The tracker's own probe
// learns a client's pool name from it, and a failure (-1 without a
// connection) names the pool of a pool timeout.
//
// Without a connection is told by cn's data word: comparing the interface
// with nil, or handing ctx on, would cost a spill on every call.
func (d *dispatcher) RecordPendingRequests(ctx context.Context, delta int, cn redis.ConnInfo, poolName string) {
	if connInfoKey(cn) == 0 && (delta < 0 || d.slow.Load() != 0 && d.probing.Load() != 0) {
		d.pendingWithoutConn(delta, poolName)
	}
}

// pendingWithoutConn handles a request's start (+1) and its failure (-1).
//
//go:noinline
func (d *dispatcher) pendingWithoutConn(delta int, poolName string) {
	if delta < 0 {
		// A request failed (pool timeout, cancelled context): the hook
		// that enriches a pool timeout asks which pool it was.
		g := curG()
		d.failed[gslot(g)].Store(&failNote{g: g, pool: poolName})
		return
	}
	if d.probing.Load() != 0 {
		if res, ok := d.probes.Load(curG()); ok && res.(*probeResult).pool == "" {
			res.(*probeResult).pool = poolName // on the probing goroutine (attach.go)
		}
	}
}

// gslot is the entry of a per-goroutine table for goroutine g.
func gslot(g uintptr) uintptr { return (g>>6 ^ g>>12) & 63 }

type failNote struct {
	g    uintptr
	pool string
}

// failedPool returns the pool whose connection request failed last on
// goroutine g, or "".
func (d *dispatcher) failedPool(g uintptr) string {
	if n := d.failed[gslot(g)].Load(); n != nil && n.g == g {
		return n.pool
	}
	return ""
}

// RecordConnectionWaitTime runs on the caller's goroutine with the caller's
// context right after a checkout, on both the idle and the fresh-dial path:
// the hold starts here, with the mark on the context.
func (d *dispatcher) RecordConnectionWaitTime(ctx context.Context, dur time.Duration, cn redis.ConnInfo) {
	if d.slow.Load() == 0 {
		// the common case here, the rest in waitSlow
		if r, st := d.cached(cn); st <= stIdle { // not used, not closed
			// r.beginHold(ctx), written out: a call here would cost a
			// frame of its own and a second spill of ctx
			// (TestHoldPathsAgree keeps the two the same)
			m := markFrom(ctx)
			if r.mark.Load() != m {
				r.mark.Store(m)
			}
			r.holderG.Store(curG())
			if r.sticky.Load() != stickyNone {
				r.sticky.Store(stickyNone)
			}
			r.holdSeq.Add(1)
			r.acquiredAt.Store(nanotime())
			r.state.Store(stUsed)
			return
		}
	}
	d.waitSlow(ctx, cn)
}

// waitSlow is RecordConnectionWaitTime for the first checkout after a mode
// check, a connection not in the cache, new to its record, or whose return
// was missed.
//
//go:noinline
func (d *dispatcher) waitSlow(ctx context.Context, cn redis.ConnInfo) {
	if !d.saw.Load() && d.saw.CompareAndSwap(false, true) { // read-mostly: no shared write per command
		d.gen.Add(1)
		d.slow.Add(-1)
	}
	d.checkout(ctx, cn)
}

// checkout starts the hold of cn's record, on the caller's goroutine with
// the caller's context.
func (d *dispatcher) checkout(ctx context.Context, cn redis.ConnInfo) {
	r := d.lookup(cn, stNew)
	if r == nil {
		return
	}
	if r.poolName.Load() == nil || r.state.Load() == stUsed {
		r.settle(cn)
	}
	r.beginHold(ctx)
}

// RecordOperationDuration runs on the caller's goroutine after a command:
// a connection still held then outlived the command (Conn, Watch).
func (d *dispatcher) RecordOperationDuration(ctx context.Context, dur time.Duration, cmd redis.Cmder, attempts int, err error, cn redis.ConnInfo, db int) {
	if d.slow.Load() == 0 {
		// the common case: the connection went back to the pool already
		if _, st := d.cached(cn); st <= stIdle { // not used, not closed
			return
		}
	}
	d.operationSlow(cmd, cn)
}

// operationSlow is RecordOperationDuration for a connection still held, or
// one not in the cache.
//
//go:noinline
func (d *dispatcher) operationSlow(cmd redis.Cmder, cn redis.ConnInfo) {
	if r := d.lookup(cn, stNew); r != nil && r.state.Load() == stUsed {
		r.afterOperation(cmd.Name(), 2) // skip operationSlow, RecordOperationDuration
	}
}

// RecordPipelineOperationDuration is the pipeline form of RecordOperationDuration.
func (d *dispatcher) RecordPipelineOperationDuration(ctx context.Context, dur time.Duration, op string, n, attempts int, err error, cn redis.ConnInfo, db int) {
	if r := d.lookup(cn, stNew); r != nil && r.state.Load() == stUsed {
		r.afterOperation("pipeline", 1) // skip RecordPipelineOperationDuration
	}
}

// RecordConnectionClosed drops records of connections without a wrapper
// (wrapped ones are dropped when their net.Conn closes).
func (d *dispatcher) RecordConnectionClosed(ctx context.Context, cn redis.ConnInfo, reason string, err error) {
	if m := d.prefixes.Load(); m != nil && len(*m) > 0 {
		if r := d.record(cn); r != nil && r.conn == nil {
			r.tr.dropRecord(r, cn)
		}
	}
}

// The dispatcher has no use for the other events.

// RecordConnectionCreateTime does nothing.
func (d *dispatcher) RecordConnectionCreateTime(context.Context, time.Duration, redis.ConnInfo) {}

// RecordConnectionRelaxedTimeout does nothing.
func (d *dispatcher) RecordConnectionRelaxedTimeout(context.Context, int, redis.ConnInfo, string, string) {
}

// RecordConnectionHandoff does nothing.
func (d *dispatcher) RecordConnectionHandoff(context.Context, redis.ConnInfo, string) {}

// RecordError does nothing.
func (d *dispatcher) RecordError(context.Context, string, redis.ConnInfo, string, bool, int) {}

// RecordMaintenanceNotification does nothing.
func (d *dispatcher) RecordMaintenanceNotification(context.Context, redis.ConnInfo, string) {}

// RecordPubSubMessage does nothing.
func (d *dispatcher) RecordPubSubMessage(context.Context, redis.ConnInfo, string, string, bool) {}

// RecordStreamLag does nothing.
func (d *dispatcher) RecordStreamLag(context.Context, time.Duration, redis.ConnInfo, string, string, string) {
}
