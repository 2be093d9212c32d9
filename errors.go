package redisleak

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// PoolTimeoutError is returned instead of redis.ErrPoolTimeout by an
// instrumented client (as the command's Err and as the returned error): it
// says who holds the pool. errors.Is(err, redis.ErrPoolTimeout) holds.
// Ring shard clients keep the bare error (Ring's heartbeat compares it with
// ==); the Ring itself returns the enriched one.
type PoolTimeoutError struct {
	// Err is the error go-redis returned (redis.ErrPoolTimeout).
	Err error
	// Pool is the go-redis pool that timed out ("" when unknown).
	Pool string
	// Held counts current holds by kind and owner.
	Held []HolderCount
	// Longest are the longest current holds, longest first (at most 3).
	Longest []Leak
}

// HolderCount counts holds of one kind and owner.
type HolderCount struct {
	Kind      Kind
	Owner     string
	Count     int
	LongLived bool
}

// Error names the holders: counts by kind and owner, and the sites of the
// longest holds.
func (e *PoolTimeoutError) Error() string {
	var b strings.Builder
	b.WriteString(e.Err.Error())
	total := 0
	for _, h := range e.Held {
		total += h.Count
	}
	if e.Pool != "" {
		fmt.Fprintf(&b, " (pool %s)", e.Pool)
	}
	fmt.Fprintf(&b, ": %d %s held:", total, plural(total, "connection", "connections"))
	for i, h := range e.Held {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, " %d %s", h.Count, h.Kind)
		if h.Owner != "" {
			fmt.Fprintf(&b, " by %q", h.Owner)
		}
		if h.LongLived {
			b.WriteString(" (long-lived)")
		}
	}
	if len(e.Longest) > 0 {
		b.WriteString("; longest:")
		for i, l := range e.Longest {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, " %v %s at %s", l.HeldFor.Round(time.Millisecond), l.Kind, orUnknown(l.Site))
		}
	}
	return b.String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// Unwrap returns Err.
func (e *PoolTimeoutError) Unwrap() error { return e.Err }

// poolTimeoutError describes the pool that timed out (pool; "" when it is
// unknown: every pool of the client but PubSub's), as of now. It never
// takes a goroutine profile: sites are those known without one.
func (t *Tracker) poolTimeoutError(err error, pool string) error {
	t.poolTimeouts.Add(1)
	holds := t.listHolds(func(v holdView) bool {
		if pool != "" {
			return v.rec.pool() == pool
		}
		return v.kind != KindPubSub // PubSub connections have their own pool
	}, 3, false)
	counts := map[HolderCount]int{}
	for _, h := range holds {
		counts[HolderCount{Kind: h.Kind, Owner: h.Owner, LongLived: h.LongLived}]++
	}
	held := make([]HolderCount, 0, len(counts))
	for k, n := range counts {
		k.Count = n
		held = append(held, k)
	}
	sort.Slice(held, func(i, j int) bool {
		if held[i].Count != held[j].Count {
			return held[i].Count > held[j].Count
		}
		return string(held[i].Kind)+held[i].Owner < string(held[j].Kind)+held[j].Owner
	})
	return &PoolTimeoutError{
		Err:     err,
		Pool:    pool,
		Held:    held,
		Longest: holds[:min(3, len(holds))],
	}
}
