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

	// ClientKind is ClientKindClient, ClientKindFailover, ClientKindCluster
	// or ClientKindRing.
	ClientKind string `json:"clientKind"`
	// ObserverMode is ModeObserver or ModeHooks (see Tracker.Mode). In hooks
	// mode Total and Idle come from go-redis's PoolStats and InUse is their
	// difference.
	ObserverMode string `json:"observerMode"`
	// LeaksReported counts leaks reported since Instrument.
	LeaksReported uint64 `json:"leaksReported"`
	// LeaksClosed counts leaked connections closed by ActionClose.
	LeaksClosed uint64 `json:"leaksClosed"`
	// PoolTimeouts counts pool timeouts seen by the tracker's hooks.
	PoolTimeouts uint64 `json:"poolTimeouts"`
	// Pools breaks the counts down by go-redis pool (main, pipeline and
	// pubsub pool of each node), sorted by name.
	Pools []PoolStats `json:"pools"`
	// HoldTime summarises the durations of holds that ended, by kind.
	HoldTime map[string]HoldStats `json:"holdTime"`
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
	Count uint64  `json:"count"`
	P50Ms float64 `json:"p50Ms"`
	P99Ms float64 `json:"p99Ms"`
	MaxMs float64 `json:"maxMs"`
}

// Stats returns a snapshot. It is cheap enough for a health endpoint: one
// pass over the tracked connections. After Close it returns the zero Stats
// with ClientKind and ObserverMode set.
func (t *Tracker) Stats() Stats {
	s := Stats{
		ClientKind:    t.clientKind,
		ObserverMode:  t.Mode(),
		LeaksReported: t.leaksTotal.Load(),
		LeaksClosed:   t.closedLeaks.Load(),
		PoolTimeouts:  t.poolTimeouts.Load(),
		HoldTime:      t.holds.summary(),
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
	now := nanotime()
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
// to a lock-free ring (one atomic add, one atomic store); a background
// flush every 200 ms moves them into histograms and OpenTelemetry. If more
// than ringSize holds end between two flushes, the oldest are dropped and
// counted (Dropped).
type holdRecorder struct {
	head atomic.Uint64
	ring [ringSize]atomic.Uint64
	tail uint64 // flusher only

	mu      sync.Mutex
	hist    [len6]histogram
	dropped uint64
}

const (
	ringSize = 1 << 13
	len6     = 6 // len(allKinds)
)

func newHoldRecorder() *holdRecorder { return &holdRecorder{} }

// push records a hold of kind k that lasted d nanoseconds. Encoded as
// (d+1)<<3 | k so that 0 means empty.
func (h *holdRecorder) push(k int, d int64) {
	if d < 0 {
		d = 0
	}
	i := h.head.Add(1) - 1
	h.ring[i&(ringSize-1)].Store(uint64(d+1)<<3 | uint64(k))
}

// flush drains the ring into the histograms and the metrics.
func (h *holdRecorder) flush(m *trackerMetrics) {
	head := h.head.Load()
	h.mu.Lock()
	defer h.mu.Unlock()
	if head-h.tail > ringSize {
		h.dropped += head - h.tail - ringSize
		h.tail = head - ringSize
	}
	for ; h.tail < head; h.tail++ {
		v := h.ring[h.tail&(ringSize-1)].Swap(0)
		if v == 0 {
			continue // not yet written by its writer, or overwritten
		}
		k := int(v & 7)
		d := int64(v>>3) - 1
		if k >= len6 {
			continue
		}
		h.hist[k].add(d)
		m.recordHold(k, d)
	}
}

func (h *holdRecorder) summary() map[string]HoldStats {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]HoldStats{}
	for k := range h.hist {
		hs := &h.hist[k]
		if hs.count == 0 {
			continue
		}
		out[allKinds[k]] = HoldStats{
			Count: hs.count,
			P50Ms: ms(time.Duration(hs.quantile(0.50))),
			P99Ms: ms(time.Duration(hs.quantile(0.99))),
			MaxMs: ms(time.Duration(hs.max)),
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
