package sse

import "sync/atomic"

// Stats is a snapshot of a Manager's counters. Counters only grow, except
// Clients.
type Stats struct {
	// Clients is the number of streams open now.
	Clients int
	// Connections counts streams ever started.
	Connections int64
	// Rejected counts requests refused by limits, by Authorize, or because
	// the manager was closed.
	Rejected int64
	// Published counts events published through this manager.
	Published int64
	// Received counts events received from the live channel.
	Received int64
	// Deliveries counts events queued for clients (one per client per event),
	// live and gap-filled; replayed events are counted in ReplayedEvents.
	Deliveries int64
	// Drops counts events a client did not get because its queue was full.
	Drops int64
	// SlowDisconnects counts clients disconnected because their queue was
	// full (OnFull = Disconnect).
	SlowDisconnects int64
	// WriteErrors counts streams ended by a failed or timed-out write.
	WriteErrors int64
	// Replays counts streams that resumed from a cursor;
	// ReplayedEvents the events they replayed.
	Replays, ReplayedEvents int64
	// Resets counts "reset" events sent: for unusable cursors, and to the
	// open streams when the history was lost.
	Resets int64
	// Resubscribes counts resubscriptions of the live channel after its
	// connection was lost; GapFills those that found missed events, and
	// GapEvents how many.
	Resubscribes, GapFills, GapEvents int64
	// Resyncs counts gaps the history no longer covered (it was trimmed
	// past the last delivered event): every stream was then ended so that
	// browsers resume from their own cursors.
	Resyncs int64
	// HistoryLosses counts the times the subscriber came back to a history
	// that was not the one it left (Redis lost its data): the open streams
	// then got a reset and the whole new history.
	HistoryLosses int64
}

type counters struct {
	connections, rejected, published, received, deliveries, drops atomic.Int64
	slowDisconnects, writeErrors, replays, replayedEvents, resets atomic.Int64
	resubscribes, gapFills, gapEvents, resyncs, historyLosses     atomic.Int64
}

// Stats returns a snapshot of the manager's counters. Safe to call at any
// time, also after Close.
func (m *Manager) Stats() Stats {
	m.mu.RLock()
	n := len(m.clients)
	m.mu.RUnlock()
	s := &m.stats
	return Stats{
		Clients:         n,
		Connections:     s.connections.Load(),
		Rejected:        s.rejected.Load(),
		Published:       s.published.Load(),
		Received:        s.received.Load(),
		Deliveries:      s.deliveries.Load(),
		Drops:           s.drops.Load(),
		SlowDisconnects: s.slowDisconnects.Load(),
		WriteErrors:     s.writeErrors.Load(),
		Replays:         s.replays.Load(),
		ReplayedEvents:  s.replayedEvents.Load(),
		Resets:          s.resets.Load(),
		Resubscribes:    s.resubscribes.Load(),
		GapFills:        s.gapFills.Load(),
		GapEvents:       s.gapEvents.Load(),
		Resyncs:         s.resyncs.Load(),
		HistoryLosses:   s.historyLosses.Load(),
	}
}
