package keyspace

import (
	"fmt"
	"time"
)

// GapReason says why events may have been lost (see Gap).
type GapReason int

const (
	// GapReconnect: the subscriber's connection failed (an error, a
	// server restart or failover, a connection closed by the server, for
	// example beyond its client-output-buffer-limit for pubsub, or no
	// reply to PING) and was replaced.
	GapReconnect GapReason = iota + 1
	// GapNodeJoined: a server (a cluster primary or ring shard) joined
	// after Start; whatever it published before it was subscribed to is
	// not known.
	GapNodeJoined
	// GapFlagsRemoved: the periodic check found flags the handlers need
	// removed from the server's setting (and, in merge mode, put them
	// back): the server published nothing for them in between.
	GapFlagsRemoved
)

// String returns the reason's name: "reconnect", "node-joined" or
// "flags-removed".
func (r GapReason) String() string {
	switch r {
	case GapReconnect:
		return "reconnect"
	case GapNodeJoined:
		return "node-joined"
	case GapFlagsRemoved:
		return "flags-removed"
	}
	return fmt.Sprintf("GapReason(%d)", int(r))
}

// Gap describes one occasion on which events of one server may have been
// lost, for Options.OnGapDetail: a handler that keeps state per server (in
// a cluster, per primary) needs to resynchronise only that server's keys.
type Gap struct {
	// Node is the server's address, as in Event.Node.
	Node string
	// Reason is why events may have been lost.
	Reason GapReason
	// Err is what broke the connection (GapReconnect), else nil.
	Err error
	// Since is when the manager noticed: the failed connection was dropped
	// (events may have been lost from a little earlier: a closed
	// connection is noticed within about a second, a silent one within two
	// PingIntervals), the new server was found, or, for GapFlagsRemoved,
	// the last check that found the flags in place.
	Since time.Time
	// At is when the subscription was back (or the flags were found
	// removed): events after it are delivered.
	At time.Time
}

// String describes the gap, e.g. "keyspace: gap on 10.0.0.1:6379
// (reconnect: EOF) from 12:00:01.2 to 12:00:01.5".
func (g Gap) String() string {
	why := g.Reason.String()
	if g.Err != nil {
		why += ": " + g.Err.Error()
	}
	const tf = "15:04:05.000"
	return fmt.Sprintf("keyspace: gap on %s (%s) from %s to %s", g.Node, why, g.Since.Format(tf), g.At.Format(tf))
}
