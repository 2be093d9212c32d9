package redisleak

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Leak describes a connection hold: a leak when returned by Scan or passed
// to OnLeak; any current hold when returned by Holds. It is a value: it does
// not change after it was made.
type Leak struct {
	ConnID     uint64        // the tracker's id of the dialed connection (0 in hooks mode)
	Kind       Kind          // KindCommand, KindPipeline, KindTx, KindConn, KindPubSub, KindBlocking
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
	Kind        Kind      `json:"kind"`
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
