package redisleak

import (
	"math"
	"math/bits"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Stats is a snapshot of a tracker's view of its client. Total = Idle +
// InUse over all the client's pools (PubSub included) and nodes;
// LongLived and Leaked are parts of InUse.
type Stats struct {
	Total     int `json:"total"`
	Idle      int `json:"idle"`
	InUse     int `json:"inUse"`
	LongLived int `json:"longLived"`
	Leaked    int `json:"leaked"`
	// AutoLongLived counts the holds of LongLived that are long-lived by
	// behaviour (Options.AutoLongLived). In the health JSON it is
	// "autoLongLivedCount"; "autoLongLived" lists those holds.
	AutoLongLived int `json:"autoLongLivedCount"`

	// ClientKind is ClientKindClient, ClientKindFailover, ClientKindCluster
	// or ClientKindRing.
	ClientKind ClientKind `json:"clientKind"`
	// ObserverMode is ModeObserver or ModeHooks. In hooks mode Total and
	// Idle come from go-redis's PoolStats and InUse is their difference.
	ObserverMode Mode `json:"observerMode"`
	// LeaksReported counts leaks reported since Instrument.
	LeaksReported uint64 `json:"leaksReported"`
	// LeaksClosed counts leaked connections whose socket ActionClose
	// closed. Closing does not give the pool its slot back: go-redis keeps
	// it until the holder next uses the connection (the call fails and the
	// connection is discarded) or closes it.
	LeaksClosed uint64 `json:"leaksClosed"`
	// LeaksFreed counts connections of LeaksClosed that go-redis has since
	// discarded: their pool slots are free again.
	LeaksFreed uint64 `json:"leaksFreed"`
	// PoolTimeouts counts pool timeouts seen by the tracker's hooks.
	PoolTimeouts uint64 `json:"poolTimeouts"`
	// Pools breaks the counts down by go-redis pool (main, pipeline and
	// pubsub pool of each node), sorted by name.
	Pools []PoolStats `json:"pools"`
	// HoldTime summarises the durations of holds that ended, by kind.
	HoldTime map[Kind]HoldStats `json:"holdTime"`
	// HoldsDropped counts ended holds left out of HoldTime's percentiles
	// and of the hold-time metric because they ended faster than the
	// tracker could record them (the sum of HoldTime[*].Dropped; the
	// maxima still include them). The recorder buffers 8,192 holds and
	// is drained whenever half of that has filled, so holds are dropped
	// only when they end faster than one goroutine can record them, or
	// while it is starved of CPU.
	HoldsDropped uint64 `json:"holdsDropped"`
}

// PoolStats is the part of Stats about one go-redis pool.
type PoolStats struct {
	Name      string `json:"name"`
	Addr      string `json:"addr"`
	Total     int    `json:"total"`
	Idle      int    `json:"idle"`
	InUse     int    `json:"inUse"`
	LongLived int    `json:"longLived"`
	Leaked    int    `json:"leaked"`
}

// HoldStats summarises ended holds of one kind. Percentiles come from a
// log-linear histogram (4 buckets per power of two: within 19%).
type HoldStats struct {
	// Count is the number of holds in the histogram.
	Count uint64 `json:"count"`
	// Dropped is the number of holds left out of the histogram (and of
	// the hold-time metric) because more ended than the tracker could
	// record; Count + Dropped holds of this kind ended.
	Dropped uint64  `json:"dropped"`
	P50Ms   float64 `json:"p50Ms"`
	P99Ms   float64 `json:"p99Ms"`
	// MaxMs is the longest hold of this kind, exact, dropped holds
	// included.
	MaxMs float64 `json:"maxMs"`
}

// Stats returns a snapshot. It is cheap enough for a health endpoint: one
// pass over the tracked connections. After Close it returns the zero Stats
// with ClientKind and ObserverMode set.
func (t *Tracker) Stats() Stats {
	s := Stats{
		ClientKind:    t.clientKind,
		ObserverMode:  t.mode(),
		LeaksReported: t.leaksTotal.Load(),
		LeaksClosed:   t.closedLeaks.Load(),
		LeaksFreed:    t.freedLeaks.Load(),
		PoolTimeouts:  t.poolTimeouts.Load(),
		HoldTime:      t.holds.summary(),
	}
	for _, hs := range s.HoldTime {
		s.HoldsDropped += hs.Dropped
	}
	if t.closed.Load() {
		return s
	}
	if s.ObserverMode == ModeHooks {
		ps := t.client.PoolStats()
		s.Total, s.Idle = int(ps.TotalConns), int(ps.IdleConns)
		s.InUse = s.Total - s.Idle
		now := nanotime()
		for _, op := range t.inflightOps() {
			if v := t.evaluateOp(op, now); v.longLived {
				s.LongLived++
			} else if v.leaked {
				s.Leaked++
			}
		}
		return s
	}
	now := t.now()
	pools := map[string]*PoolStats{}
	for _, r := range t.snapshotRecords() {
		st := r.state.Load()
		if st == stClosed {
			continue
		}
		name := r.pool()
		if st == stNew && name == "" {
			continue // dialed, not yet pooled (or a failed handshake)
		}
		p := pools[name]
		if p == nil {
			p = &PoolStats{Name: name, Addr: r.addr}
			pools[name] = p
		}
		p.Total++
		v, held := t.evaluate(r, now)
		if !held {
			p.Idle++
			continue
		}
		p.InUse++
		if v.longLived {
			p.LongLived++
			if v.by == LongLivedAuto {
				s.AutoLongLived++
			}
		} else if v.leaked {
			p.Leaked++
		}
	}
	s.Pools = make([]PoolStats, 0, len(pools))
	for _, p := range pools {
		s.Total += p.Total
		s.Idle += p.Idle
		s.InUse += p.InUse
		s.LongLived += p.LongLived
		s.Leaked += p.Leaked
		s.Pools = append(s.Pools, *p)
	}
	sort.Slice(s.Pools, func(i, j int) bool { return s.Pools[i].Name < s.Pools[j].Name })
	return s
}

// holdRecorder collects ended holds. The observer's hot path only appends
// to a lock-free ring (one atomic add, one atomic swap, one atomic load for
// the per-kind maximum); the flusher (every 200 ms, or as soon as a writer
// sees the ring half full) moves the entries into histograms and
// OpenTelemetry.
//
// Nothing is lost silently. Each ring entry carries the lap of its position
// (8 bits), so the flusher knows whether a slot holds the entry it expects,
// an entry its writer has not stored yet (it stops there and resumes next
// time), a newer one (the expected entry was overwritten: skip it) or a
// late one from an earlier lap (record it). A writer whose swap replaces an
// entry the flusher has not read counts that entry in dropped, by kind. The
// per-kind maximum is kept exactly by the writers, dropped holds included.
type holdRecorder struct {
	head    atomic.Uint64
	ring    [ringSize]atomic.Uint64
	max     [len6]atomic.Int64  // exact maximum per kind, dropped holds included
	dropped [len6]atomic.Uint64 // holds overwritten before the flusher read them
	wake    chan struct{}       // cap 1: a writer saw the ring half full

	mu     sync.Mutex
	tail   uint64 // next ring position to read; guarded by mu
	sweeps int    // flushes that still sweep for late entries; guarded by mu
	hist   [len6]histogram
}

const (
	ringBits = 13
	ringSize = 1 << ringBits
	len6     = 6 // len(allKinds)

	// An entry is (d+1)<<holdShift | lap<<3 | kind; 0 means empty.
	holdShift = 11
	holdCap   = 1<<(64-holdShift) - 1 // d+1 is capped here (104 days) in the histogram; max stays exact
)

func newHoldRecorder() *holdRecorder { return &holdRecorder{wake: make(chan struct{}, 1)} }

// lapOf is the 8-bit lap tag of ring position i.
func lapOf(i uint64) uint8 { return uint8(i >> ringBits) }

// entryLap is the lap tag of a ring entry.
func entryLap(v uint64) uint8 { return uint8(v >> 3) }

// push records a hold of kind k that lasted d nanoseconds.
func (h *holdRecorder) push(k int, d int64) {
	if d < 0 {
		d = 0
	}
	if d > h.max[k].Load() {
		h.raiseMax(k, d)
	}
	i := h.head.Add(1) - 1
	e := uint64(d) + 1
	if e > holdCap {
		e = holdCap
	}
	v := e<<holdShift | uint64(lapOf(i))<<3 | uint64(k)
	if old := h.ring[i&(ringSize-1)].Swap(v); old != 0 {
		h.overwrote(i, v, old)
	}
	if i&(ringSize/2-1) == 0 {
		h.wakeFlusher()
	}
}

// wakeFlusher asks for a flush now rather than at the next tick: half the
// ring has filled since the last request.
func (h *holdRecorder) wakeFlusher() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

func (h *holdRecorder) raiseMax(k int, d int64) {
	for {
		m := h.max[k].Load()
		if d <= m || h.max[k].CompareAndSwap(m, d) {
			return
		}
	}
}

// overwrote handles a writer's swap at position i (entry v) that replaced
// an entry old the flusher had not read: one of the two is dropped.
func (h *holdRecorder) overwrote(i, v, old uint64) {
	if int8(entryLap(old)-lapOf(i)) > 0 {
		// This writer is late: old belongs to a later lap. Put it back
		// and drop this entry instead, unless v was taken meanwhile (by
		// the flusher or another writer, who accounted for it).
		if h.ring[i&(ringSize-1)].CompareAndSwap(v, old) {
			h.dropped[v&7].Add(1)
			return
		}
	}
	h.dropped[old&7].Add(1)
}

// flush drains the ring into the histograms and the metrics.
func (h *holdRecorder) flush(m *trackerMetrics) {
	h.mu.Lock()
	defer h.mu.Unlock()
	head := h.head.Load()
	if head-h.tail > 64*ringSize {
		// far behind (the lap tags would become ambiguous): every slot
		// was reused many times since, and each overwrite was counted
		h.tail = head - ringSize
	}
	for h.tail < head {
		p := h.tail
		slot := &h.ring[p&(ringSize-1)]
		v := slot.Load()
		diff := int8(entryLap(v) - lapOf(p))
		switch {
		case v != 0 && diff == 0:
			if !slot.CompareAndSwap(v, 0) {
				continue // a writer replaced it meanwhile: look again
			}
			h.record(v, m)
			h.tail++
			continue
		case v != 0 && diff > 0:
			// p's entry was overwritten by a later lap (counted by that
			// writer), or will be when its late writer stores
			h.tail++
			h.sweeps = lateSweeps
			continue
		case v != 0:
			// a late entry of an earlier lap, whose position was passed
			if slot.CompareAndSwap(v, 0) {
				h.record(v, m)
			}
		}
		// p's writer has not stored yet
		if head-p < ringSize {
			break // resume here next time
		}
		// p+ringSize is claimed too: p's entry will be overwritten (and
		// counted) or arrive late (and be recorded by the sweep)
		h.tail++
		h.sweeps = lateSweeps
	}
	if h.tail == head && h.sweeps > 0 {
		h.sweeps--
		h.sweep(head, m)
	}
}

// lateSweeps is how many flushes sweep for late entries after the flusher
// passed a position whose entry was not there: a writer late by more than
// that (a second or so) has its entry recorded when the flusher reaches its
// slot again, or counted as dropped when a writer overwrites it.
const lateSweeps = 5

// sweep records late entries: entries whose writer stored them after the
// flusher had passed their position. For each slot it takes the last
// position before head that maps to it; an entry of an earlier lap than
// that position's is late.
func (h *holdRecorder) sweep(head uint64, m *trackerMetrics) {
	if head == 0 {
		return
	}
	base := (head - 1) &^ (ringSize - 1)
	for s := uint64(0); s < ringSize; s++ {
		p := base + s
		if p >= head {
			if p < ringSize {
				continue // never claimed
			}
			p -= ringSize
		}
		slot := &h.ring[s]
		v := slot.Load()
		if v != 0 && int8(entryLap(v)-lapOf(p)) < 0 && slot.CompareAndSwap(v, 0) {
			h.record(v, m)
		}
	}
}

func (h *holdRecorder) record(v uint64, m *trackerMetrics) {
	k := int(v & 7)
	if k >= len6 {
		return
	}
	d := int64(v>>holdShift) - 1
	h.hist[k].add(d)
	m.recordHold(k, d)
}

func (h *holdRecorder) summary() map[Kind]HoldStats {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[Kind]HoldStats{}
	for k := range h.hist {
		hs := &h.hist[k]
		dropped := h.dropped[k].Load()
		if hs.count == 0 && dropped == 0 {
			continue
		}
		mx := max(h.max[k].Load(), hs.max)
		out[allKinds[k]] = HoldStats{
			Count:   hs.count,
			Dropped: dropped,
			P50Ms:   ms(time.Duration(hs.quantile(0.50))),
			P99Ms:   ms(time.Duration(hs.quantile(0.99))),
			MaxMs:   ms(time.Duration(mx)),
		}
	}
	return out
}

// histogram is log-linear over nanoseconds: 4 sub-buckets per power of 2.
type histogram struct {
	count   uint64
	max     int64
	buckets [64 * 4]uint64
}

func bucketOf(d int64) int {
	if d < 4 {
		return int(d)
	}
	e := bits.Len64(uint64(d)) - 1 // d in [2^e, 2^(e+1))
	sub := int((uint64(d) >> (e - 2)) & 3)
	return e*4 + sub
}

// bucketUpper is the largest value in bucket b.
func bucketUpper(b int) int64 {
	if b < 4 {
		return int64(b)
	}
	e, sub := b/4, b%4
	lo := uint64(1)<<e + uint64(sub)<<(e-2)
	hi := lo + uint64(1)<<(e-2) - 1
	if hi > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(hi)
}

func (h *histogram) add(d int64) {
	h.count++
	if d > h.max {
		h.max = d
	}
	h.buckets[bucketOf(d)]++
}

func (h *histogram) quantile(q float64) int64 {
	if h.count == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.count)))
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for b, n := range h.buckets {
		seen += n
		if seen >= rank {
			v := bucketUpper(b)
			if v > h.max {
				v = h.max
			}
			return v
		}
	}
	return h.max
}
