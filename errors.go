package redisleak

import (
	"fmt"
	"sort"
	"strings"
	"sync"
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
	// Held counts current holds by kind and owner.
	Held []HolderCount
	// Longest are the longest current holds, longest first (at most 3).
	Longest []Leak
}

// HolderCount counts holds of one kind and owner.
type HolderCount struct {
	Kind, Owner string
	Count       int
	LongLived   bool
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
	fmt.Fprintf(&b, ": %d connections held:", total)
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

// Unwrap returns Err.
func (e *PoolTimeoutError) Unwrap() error { return e.Err }

// summaryCache keeps the holder summary for a second: a pool timeout comes
// in storms, and finding the sites of commands in flight takes a goroutine
// dump.
type summaryCache struct {
	mu   sync.Mutex
	at   time.Time
	held []HolderCount
	long []Leak
}

func (t *Tracker) poolTimeoutError(err error) error {
	t.poolTimeouts.Add(1)
	c := &t.summary
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) > time.Second {
		// PubSub connections have their own pool: they do not exhaust it.
		holds := t.listHolds(func(v holdView) bool { return v.kind != KindPubSub }, 3)
		counts := map[HolderCount]int{}
		for _, h := range holds {
			counts[HolderCount{Kind: h.Kind, Owner: h.Owner, LongLived: h.LongLived}]++
		}
		c.held = c.held[:0]
		for k, n := range counts {
			k.Count = n
			c.held = append(c.held, k)
		}
		sort.Slice(c.held, func(i, j int) bool {
			if c.held[i].Count != c.held[j].Count {
				return c.held[i].Count > c.held[j].Count
			}
			return c.held[i].Kind+c.held[i].Owner < c.held[j].Kind+c.held[j].Owner
		})
		c.long = append(c.long[:0], holds[:min(3, len(holds))]...)
		c.at = time.Now()
	}
	return &PoolTimeoutError{
		Err:     err,
		Held:    append([]HolderCount(nil), c.held...),
		Longest: append([]Leak(nil), c.long...),
	}
}
