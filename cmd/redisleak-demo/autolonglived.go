package main

import (
	"context"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
)

// autoHint is what the demo says of each holder the tracker classified
// long-lived by behaviour, as the tracker's health JSON does.
const autoHint = "detected by behaviour: mark it with redisleak.WithLongLived at its site to make this explicit"

// unmarkHook strips redisleak.WithLongLived marks from the context of every
// dial, command and pipeline of the client it is added to, before the
// tracker sees them. With -mark-long-lived=false -auto-long-lived the demo
// adds it ahead of the tracker's hooks, so that the companions (worker,
// QueueEvents, SSE, keyspace), which mark their long-lived holds
// themselves, look to the tracker as if they had not: it then has to tell
// them from leaks by what they are (PubSub, blocking commands) or by what
// they do (Options.AutoLongLived). Owners are kept.
type unmarkHook struct{}

var _ redis.Hook = unmarkHook{}

// DialHook strips the long-lived mark from the context of each dial (a subscriber's connection is dialed with its caller's context).
func (unmarkHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return next(redisleak.WithoutLongLived(ctx), network, addr)
	}
}

// ProcessHook strips the long-lived mark from the context of each command.
func (unmarkHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		return next(redisleak.WithoutLongLived(ctx), cmd)
	}
}

// ProcessPipelineHook strips the long-lived mark from the context of each pipeline or transaction.
func (unmarkHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		return next(redisleak.WithoutLongLived(ctx), cmds)
	}
}

// autoView is a holder the tracker classified long-lived by behaviour
// (Leak.LongLivedBy == redisleak.LongLivedAuto), as the dashboard shows it.
type autoView struct {
	ConnID    uint64  `json:"connId"`
	Kind      string  `json:"kind"`
	Owner     string  `json:"owner"`
	Site      string  `json:"site"`
	HeldForMs float64 `json:"heldForMs"`
	IdleForMs float64 `json:"idleForMs"`
	Hint      string  `json:"hint"`
}

// autoHolders returns the holds among holds (the tracker's own, not the
// naive detector's) that are long-lived by behaviour, longest first as
// Tracker.Holds lists them.
func autoHolders(holds []redisleak.Leak) []redisleak.Leak {
	var out []redisleak.Leak
	for _, h := range holds {
		if h.LongLived && h.LongLivedBy == redisleak.LongLivedAuto {
			out = append(out, h)
		}
	}
	return out
}

// autoViews is autoHolders as the dashboard shows them; never nil.
func autoViews(holds []redisleak.Leak) []autoView {
	out := []autoView{}
	for _, h := range autoHolders(holds) {
		out = append(out, autoView{
			ConnID: h.ConnID, Kind: string(h.Kind), Owner: h.Owner, Site: h.Site,
			HeldForMs: msOf(h.HeldFor), IdleForMs: msOf(h.IdleFor), Hint: autoHint,
		})
	}
	return out
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// autoSighting is a holder the tracker classified long-lived by behaviour
// at some point of the run (the demo looks every time it samples the pool).
type autoSighting struct {
	Kind, Owner, Site string
	First             time.Duration // since the demo started
	Times             int           // samples that saw it so
}

// autoLog remembers the holders seen classified by behaviour, by kind, owner
// and site.
type autoLog struct {
	mu   sync.Mutex
	seen map[[3]string]*autoSighting
}

func (a *autoLog) note(holds []redisleak.Leak, since time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, h := range autoHolders(holds) {
		k := [3]string{string(h.Kind), h.Owner, h.Site}
		if a.seen == nil {
			a.seen = map[[3]string]*autoSighting{}
		}
		s := a.seen[k]
		if s == nil {
			s = &autoSighting{Kind: string(h.Kind), Owner: h.Owner, Site: h.Site, First: since}
			a.seen[k] = s
		}
		s.Times++
	}
}

// list returns the sightings, first seen first.
func (a *autoLog) list() []autoSighting {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]autoSighting, 0, len(a.seen))
	for _, s := range a.seen {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].First != out[j].First {
			return out[i].First < out[j].First
		}
		return out[i].Owner+out[i].Site < out[j].Owner+out[j].Site
	})
	return out
}
