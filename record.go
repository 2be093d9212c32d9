package redisleak

import (
	"github.com/redis/go-redis/v9"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Connection states as the tracker sees them.
const (
	stNew    uint32 = iota // dialed, not yet in any pool state
	stIdle                 // in the pool
	stUsed                 // held: a hold is running
	stClosed               // closed; the record is about to be dropped
)

// Hold kinds.
const (
	KindCommand  = "command"  // a single command (the connection returns when it ends)
	KindPipeline = "pipeline" // a pipeline
	KindTx       = "tx"       // a MULTI/EXEC pipeline or a Watch callback
	KindConn     = "conn"     // a Client.Conn, from its first command until Close
	KindPubSub   = "pubsub"   // a PubSub connection, for its life
	KindBlocking = "blocking" // a blocking command (BLPOP, XREAD BLOCK, WAIT, ...)
)

var allKinds = []string{KindCommand, KindPipeline, KindTx, KindConn, KindPubSub, KindBlocking}

// Indexes of the kinds in allKinds.
const (
	kiCommand = iota
	kiPipeline
	kiTx
	kiConn
	kiPubSub
	kiBlocking
)

func kindIndex(k string) int {
	for i, x := range allKinds {
		if x == k {
			return i
		}
	}
	return 0
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
	// connection has been idle (idleFor), and dispatcher.recentRecord
	// compares it with an event's connection.
	info atomic.Value
	// cnKey is the address of info's go-redis connection (connInfoKey),
	// compared by dispatcher.recentRecord.
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
	dialPCs      []uintptr // dial stack, kept when it names a site (PubSub)
	sitePCs      []uintptr // acquisition stack captured for sticky holds
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

// kindIndex is the current hold's kind as an index in allKinds (for the hot
// path: no string comparisons).
func (r *connRecord) kindIndex() int {
	if r.pubsub.Load() {
		return kiPubSub
	}
	if r.blockDeadline.Load() != 0 {
		return kiBlocking
	}
	switch r.sticky.Load() {
	case stickyTx:
		return kiTx
	case stickyConn:
		return kiConn
	}
	if m := r.mark.Load(); m != nil {
		if m.tx {
			return kiTx
		}
		if m.pipeline {
			return kiPipeline
		}
	}
	return kiCommand
}

// kind classifies the current hold.
func (r *connRecord) kind() string { return allKinds[r.kindIndex()] }

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
