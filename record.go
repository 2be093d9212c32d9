package redisleak

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"
)

// Connection states as the tracker sees them.
const (
	stNew    uint32 = iota // dialed, not yet in any pool state
	stIdle                 // in the pool
	stUsed                 // held: a hold is running
	stClosed               // closed; the record is about to be dropped
)

// Kind is what a hold is, as in Leak.Kind, Options.KindMaxHold and
// Stats.HoldTime. Its values are strings in JSON and in map keys.
type Kind string

// Hold kinds.
const (
	KindCommand  Kind = "command"  // a single command (the connection returns when it ends)
	KindPipeline Kind = "pipeline" // a pipeline
	KindTx       Kind = "tx"       // a MULTI/EXEC pipeline or a Watch callback
	KindConn     Kind = "conn"     // a Client.Conn, from its first command until Close
	KindPubSub   Kind = "pubsub"   // a PubSub connection, for its life
	KindBlocking Kind = "blocking" // a blocking command (BLPOP, XREAD BLOCK, WAIT, ...)
)

// kindID numbers the kinds for the hot path (no string comparisons) and
// for per-kind tables; kindNames spells them.
type kindID uint8

const (
	kCommand kindID = iota
	kPipeline
	kTx
	kConn
	kPubSub
	kBlocking
	numKinds
)

var kindNames = [numKinds]Kind{
	kCommand:  KindCommand,
	kPipeline: KindPipeline,
	kTx:       KindTx,
	kConn:     KindConn,
	kPubSub:   KindPubSub,
	kBlocking: KindBlocking,
}

// kindOf returns the number of kind k, and whether k is a kind.
func kindOf(k Kind) (kindID, bool) {
	for i, x := range kindNames {
		if x == k {
			return kindID(i), true
		}
	}
	return 0, false
}

// sticky marks recorded on a hold when it outlives the command that took it.
const (
	stickyNone uint32 = iota
	stickyConn
	stickyTx
)

// connRecord is the tracker's view of one dialed connection.
type connRecord struct {
	tr   *Tracker
	id   uint64
	conn *trackedConn // nil for a connection opened before the tracker (no wrapper)
	addr string

	dialMark *mark // set at dial, read-only after

	// info is go-redis's connection (redis.ConnInfo), kept from the first
	// event that names it (setInfo): its last-use time tells how long the
	// connection has been idle (idleFor), and dispatcher.lookup
	// compares it with an event's connection.
	info atomic.Value
	// cnKey is the address of info's go-redis connection (connInfoKey),
	// compared by dispatcher.lookup.
	cnKey atomic.Uintptr

	state        atomic.Uint32
	pubsub       atomic.Bool
	sticky       atomic.Uint32 // set once the hold outlived a command of its holder
	actionClosed atomic.Bool   // ActionClose closed the socket; the record's end frees the slot (Stats.LeaksFreed)
	// pre: the hold with holdSeq 1 was running when the tracker was
	// attached; anon: the record stands for a connection not yet
	// identified (attach.go; guarded by tr.mu).
	pre, anon bool

	acquiredAt atomic.Int64 // nanotime of the current hold's start
	holdSeq    atomic.Uint64
	mark       atomic.Pointer[mark] // mark on the acquiring call's context
	holderG    atomic.Uintptr       // the goroutine that acquired the hold (curG)

	// blockDeadline: 0 no blocking command in flight; blockForever (-1):
	// one with timeout 0; else the nanotime until which it is exempt.
	blockDeadline atomic.Int64
	req           *reqScanner // request stream state for recognition (blocking.go), nil until needed

	poolName atomic.Pointer[string]

	// reportedSeq is the holdSeq reported as a leak (0: none); autoSeq the
	// holdSeq announced as long-lived by behaviour.
	reportedSeq atomic.Uint64
	autoSeq     atomic.Uint64

	mu   sync.Mutex  // guards cold (set before publication for a dial stack)
	cold *recordCold // what few holds need, allocated when first needed
}

// recordCold holds a record's rarely needed parts, apart to keep records
// of ordinary connections small.
type recordCold struct {
	dialPCs      []uintptr // dial stack, kept when it names a site (PubSub); interned (internPCs)
	sitePCs      []uintptr // acquisition stack captured for sticky holds; interned
	siteSeq      uint64    // holdSeq the sitePCs belong to
	lastReported *Leak     // the report of the hold reportedSeq names
}

// coldLocked returns r.cold, allocating it. Called with r.mu held.
func (r *connRecord) coldLocked() *recordCold {
	if r.cold == nil {
		r.cold = &recordCold{}
	}
	return r.cold
}

// reported returns the last report of r, or nil.
func (r *connRecord) reported() *Leak {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cold == nil {
		return nil
	}
	return r.cold.lastReported
}

func (r *connRecord) pool() string {
	if p := r.poolName.Load(); p != nil {
		return *p
	}
	return ""
}

func (r *connRecord) setPool(name string) {
	if r.poolName.Load() == nil && name != "" {
		r.poolName.CompareAndSwap(nil, r.tr.internPool(name))
	}
}

// kindID classifies the current hold.
func (r *connRecord) kindID() kindID { return r.kindWith(r.blockDeadline.Load()) }

// kindWith is kindID with blockDeadline loaded already (bd).
func (r *connRecord) kindWith(bd int64) kindID {
	if r.pubsub.Load() {
		return kPubSub
	}
	if bd != 0 {
		return kBlocking
	}
	if s := r.sticky.Load(); s != stickyNone { // one test in the common case
		if s == stickyTx {
			return kTx
		}
		return kConn
	}
	if m := r.mark.Load(); m != nil {
		if m.tx {
			return kTx
		}
		if m.pipeline {
			return kPipeline
		}
	}
	return kCommand
}

// kind classifies the current hold.
func (r *connRecord) kind() Kind { return kindNames[r.kindID()] }

// basePoolName strips go-redis's pool suffixes: the three pools of one
// client share the prefix "<addr>_<id>".
func basePoolName(name string) string {
	if s, ok := strings.CutSuffix(name, "_pubsub"); ok {
		return s
	}
	if s, ok := strings.CutSuffix(name, "_pipeline"); ok {
		return s
	}
	return name
}

// usedAter is the part of go-redis's connection that tells when it last
// started I/O (nanoseconds of wall time, kept to within 50 ms by go-redis).
type usedAter interface{ UsedAtNs() int64 }

// idleFor returns how long the connection has started no I/O, at most held.
func (r *connRecord) idleFor(now int64, held time.Duration) time.Duration {
	u, ok := r.info.Load().(usedAter)
	if !ok {
		return held
	}
	used := u.UsedAtNs()
	if used == 0 {
		return held
	}
	idle := time.Duration(now + r.tr.wallOff.Load() - used)
	if idle < 0 {
		return 0
	}
	return min(idle, held)
}

// setInfo keeps go-redis's connection of r, once.
func (r *connRecord) setInfo(cn redis.ConnInfo) {
	if cn != nil && r.info.Load() == nil {
		r.info.Store(cn)
		r.cnKey.Store(connInfoKey(cn))
	}
}

// connInfoKey is the data word of cn: the address of go-redis's connection.
func connInfoKey(cn redis.ConnInfo) uintptr {
	return (*[2]uintptr)(unsafe.Pointer(&cn))[1]
}

// The hold lifecycle, driven by the observer's events (observer.go):
// checkout → beginHold; a command or pipeline ending while its goroutine
// still holds the connection → afterOperation (sticky); return or close →
// endHold.

// returnSlow applies "+1 idle" (a return, or a new connection put in the
// pool) to a record that does not know its pool yet, or that holds nothing
// (RecordConnectionCount has the common case).
func (r *connRecord) returnSlow(cn redis.ConnInfo) {
	r.settle(cn)
	r.state.Store(stIdle)
}

// onPubSubCount applies the PubSub connection's "+1 used" / "-1 used".
func (r *connRecord) onPubSubCount(delta int, cn redis.ConnInfo) {
	if r.poolName.Load() == nil {
		r.learnPool(cn)
	}
	if delta > 0 {
		r.pubsub.Store(true)
		r.beginHold(nil)
	} else if r.conn == nil {
		r.tr.dropRecord(r, cn) // no wrapper to end it when it closes
	} else {
		r.endHold()
	}
}

func (r *connRecord) learnPool(cn redis.ConnInfo) {
	name := cn.PoolName()
	r.setPool(name)
	r.setInfo(cn)
	if r.conn != nil {
		disp.learnPrefix(name, r.tr)
	}
}

// beginHold starts a hold acquired, on the calling goroutine, with the
// mark on ctx; with ctx nil (a PubSub connection), by no goroutine and
// without a mark.
func (r *connRecord) beginHold(ctx context.Context) {
	var m *mark
	var g uintptr
	if ctx != nil {
		m, g = markFrom(ctx), curG()
	}
	if r.mark.Load() != m { // a pointer store costs a write barrier check
		r.mark.Store(m)
	}
	r.holderG.Store(g) // (another goroutine's, most often, in a busy pool)
	// (RecordConnectionWaitTime has this function written out: keep the
	// two the same)
	if r.sticky.Load() != stickyNone {
		r.sticky.Store(stickyNone)
	}
	r.holdSeq.Add(1)
	r.acquiredAt.Store(nanotime())
	r.state.Store(stUsed)
}

// endHold ends the current hold, if one runs; the connection is idle (or
// about to close).
func (r *connRecord) endHold() {
	if r.state.Load() == stUsed {
		r.endUsed()
	}
}

// endUsed is endHold for a record whose state was seen stUsed (the
// observer's return event, which has loaded it already).
func (r *connRecord) endUsed() {
	held := max(nanotime()-r.acquiredAt.Load(), 0) // (a hold ended as another began)
	bd := r.blockDeadline.Load()
	kind := r.kindWith(bd)
	r.state.Store(stIdle)
	if bd != 0 {
		r.blockDeadline.Store(0)
	}
	// holdRecorder.push, by hand: too big for the inliner
	// (RecordConnectionCount has this function written out: keep the two
	// the same)
	c := &r.tr.holds.kinds[kind]
	if held > c.max.Load() {
		c.raiseMax(held)
	}
	c.buckets[bucketOf(held)&(histBuckets-1)].Add(1) // (the mask: no bounds check)
	if rs := r.reportedSeq.Load(); rs != 0 && rs == r.holdSeq.Load() {
		r.tr.noteReturned(r, held)
	}
}

// settle learns the pool of a new record and ends a running hold: at a
// return, the hold that ends; at a checkout, one whose return was missed
// (never double-count).
//
//go:noinline
func (r *connRecord) settle(cn redis.ConnInfo) {
	if r.poolName.Load() == nil {
		r.learnPool(cn)
	}
	if r.state.Load() == stUsed {
		r.endHold()
	}
}

// afterOperation runs on the caller's goroutine when a command or pipeline
// has ended; skip is the number of the observer's frames above it, left out
// of the captured stack. If the goroutine that acquired the connection
// still holds it, the hold outlived its command (Client.Conn, Watch): it is
// a sticky hold, and its site — the first use — is captured now, once per
// hold.
//
// The holder is recognised by its goroutine, not by its context: go-redis
// reports a plain command after returning its connection to the pool, and a
// goroutine sharing the context (context.Background()) may hold it by then.
// Commands of go-redis's connection handshake (HELLO, CLIENT SETINFO, the
// options pipeline, OnConnect) run on the holder's goroutine during the
// checkout of a fresh connection: they are recognised by the frame of
// go-redis's initConn on the stack and skipped.
func (r *connRecord) afterOperation(cmdName string, skip int) {
	if r.sticky.Load() != stickyNone || r.pubsub.Load() || r.holderG.Load() != curG() {
		return
	}
	var pcs [maxStackDepth]uintptr
	n := runtime.Callers(2+skip, pcs[:r.tr.opts.StackDepth])
	if inHandshake(pcs[:n]) {
		return
	}
	seq := r.holdSeq.Load()
	r.mu.Lock()
	c := r.coldLocked()
	c.sitePCs = r.tr.internPCs(pcs[:n]) // shared: never changed in place
	c.siteSeq = seq
	r.mu.Unlock()
	if cmdName == "watch" {
		r.sticky.Store(stickyTx)
	} else {
		r.sticky.Store(stickyConn)
	}
}

// inHandshake reports whether the stack pcs runs inside go-redis's
// connection handshake.
func inHandshake(pcs []uintptr) bool {
	frames := runtime.CallersFrames(pcs)
	for {
		f, more := frames.Next()
		if strings.HasPrefix(f.Function, "github.com/redis/go-redis/") && strings.HasSuffix(f.Function, ".initConn") {
			return true
		}
		if !more {
			return false
		}
	}
}
