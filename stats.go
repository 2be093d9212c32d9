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
	// Count is the number of holds of this kind that ended.
	Count uint64  `json:"count"`
	P50Ms float64 `json:"p50Ms"`
	P99Ms float64 `json:"p99Ms"`
	// MaxMs is the longest hold of this kind, exact.
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

// holdRecorder collects ended holds: per kind, a log-linear histogram of
// atomic counters (histBuckets buckets, 4 per power of two) and the exact
// maximum. Recording a hold is one atomic add, plus a compare-and-swap
// when it is a new maximum: nothing is buffered, so nothing can be lost,
// whatever the rate, and Stats reads the counters directly. Each metrics
// collection forwards what was added since the last one to the hold-time
// histogram (flush, from the metrics callback).
type holdRecorder struct {
	kinds [numKinds]holdCounts

	mu       sync.Mutex                    // guards exported
	exported [numKinds][histBuckets]uint64 // counts already forwarded to the metric
}

type holdCounts struct {
	buckets [histBuckets]atomic.Uint64
	max     atomic.Int64
}

func newHoldRecorder() *holdRecorder { return &holdRecorder{} }

// push records a hold of kind k that lasted d nanoseconds.
func (h *holdRecorder) push(k kindID, d int64) {
	c := &h.kinds[k]
	if d > c.max.Load() {
		c.raiseMax(d)
	} else if d < 0 {
		d = 0
	}
	c.buckets[bucketOf(d)].Add(1)
}

func (c *holdCounts) raiseMax(d int64) {
	for {
		m := c.max.Load()
		if d <= m || c.max.CompareAndSwap(m, d) {
			return
		}
	}
}

// snapshot copies the counters of kind k into a histogram.
func (h *holdRecorder) snapshot(k kindID) histogram {
	c := &h.kinds[k]
	var hs histogram
	for b := range c.buckets {
		n := c.buckets[b].Load()
		hs.buckets[b] = n
		hs.count += n
	}
	hs.max = c.max.Load()
	return hs
}

// flush forwards the holds recorded since the last flush to the metric, at
// the middle of their buckets (within 10% of the exact duration).
func (h *holdRecorder) flush(m *trackerMetrics) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k := range h.kinds {
		c := &h.kinds[k]
		for b := range c.buckets {
			n := c.buckets[b].Load()
			if d := n - h.exported[k][b]; d != 0 {
				h.exported[k][b] = n
				m.recordHolds(kindID(k), bucketMid(b), d)
			}
		}
	}
}

func (h *holdRecorder) summary() map[Kind]HoldStats {
	out := map[Kind]HoldStats{}
	for k := range h.kinds {
		hs := h.snapshot(kindID(k))
		if hs.count == 0 {
			continue
		}
		out[kindNames[k]] = HoldStats{
			Count: hs.count,
			P50Ms: ms(time.Duration(hs.quantile(0.50))),
			P99Ms: ms(time.Duration(hs.quantile(0.99))),
			MaxMs: ms(time.Duration(hs.max)),
		}
	}
	return out
}

// histBuckets is the number of buckets of a histogram: 4 per power of two
// of a nanosecond count.
const histBuckets = 64 * 4

// histogram is log-linear over nanoseconds: 4 sub-buckets per power of 2.
type histogram struct {
	count   uint64
	max     int64
	buckets [histBuckets]uint64
}

func bucketOf(d int64) int {
	if d < 4 {
		return int(d)
	}
	e := bits.Len64(uint64(d)) - 1 // d in [2^e, 2^(e+1))
	sub := int((uint64(d) >> (e - 2)) & 3)
	return e*4 + sub
}

// bucketBounds returns the smallest and the largest value of bucket b
// (b >= 4: buckets 0-3 hold the values 0-3 exactly).
func bucketBounds(b int) (lo, hi uint64) {
	e, sub := b/4, b%4
	lo = uint64(1)<<e + uint64(sub)<<(e-2)
	return lo, lo + uint64(1)<<(e-2) - 1
}

// bucketMid is the middle of bucket b.
func bucketMid(b int) int64 {
	if b < 4 {
		return int64(b)
	}
	lo, hi := bucketBounds(b)
	return int64(lo + (hi-lo)/2)
}

// bucketUpper is the largest value in bucket b.
func bucketUpper(b int) int64 {
	if b < 4 {
		return int64(b)
	}
	if _, hi := bucketBounds(b); hi <= math.MaxInt64 {
		return int64(hi)
	}
	return math.MaxInt64
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
