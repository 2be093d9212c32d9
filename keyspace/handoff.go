package keyspace

import "time"

// Hand-off of slow handlers.
//
// A reader (the goroutine that reads a server's subscription) runs the
// handlers of an event itself when their queue is empty and idle: handing
// an event to another goroutine costs more than most handlers do, and in a
// storm the hand-offs would be most of the work. But while a reader runs a
// handler, nobody reads the subscription. So, while readers run handlers, a
// check looks at them every handoffTick; a reader found in the same handler
// call at two looks in a row loses its role: a new goroutine goes on
// reading, and the events that arrive meanwhile are queued, subject to the
// queue's capacity and overflow policy as usual, and handled in order by
// the handler goroutine once the slow handler returned. A handler that
// takes more than about two ticks therefore holds up reading for no more
// than that; Redis buffers those events.
//
// Short handlers that keep a reader busy are the other case: a reader that
// is found running handlers at busyLooks looks in a row (different calls,
// each shorter than a tick, but not so short that a tick held more than
// busyCalls of them) is not keeping up with the handlers, and while
// it runs them nobody reads and the other handler goroutines sit idle. Such
// a reader stops running handlers (nodeSub.queued): it queues every event,
// so that the handler goroutines (Options.Workers) run them in parallel and
// the overflow policy applies, and it goes back to running them once every
// queue is empty and idle at a look.
//
// The check sleeps while no reader runs handlers or queues every event, and
// the first one to do so wakes it (armHandoff).

// handoffTick is how often the hand-off check looks at the readers.
var handoffTick = 10 * time.Millisecond

// busyLooks is how many looks in a row must find a reader in a handler
// before it queues every event.
const busyLooks = 3

// busyCalls: a reader that ran more handler calls than this between two
// looks (10 µs or less per call, at one look per 10 ms) keeps running them
// itself: for handlers that quick, the hand-off to another goroutine would
// be a large part of the cost.
const busyCalls = 1000

// armHandoff wakes the hand-off check unless it runs.
func (m *Manager) armHandoff() {
	if !m.handoffArmed.Load() && m.handoffArmed.CompareAndSwap(false, true) {
		select {
		case m.handoffWake <- struct{}{}:
		default:
		}
	}
}

// handoffLoop is the hand-off check's goroutine (queued delivery only).
func (m *Manager) handoffLoop() {
	defer close(m.handoffDone)
	t := time.NewTicker(handoffTick)
	t.Stop()
	var subs []*nodeSub
	for {
		select {
		case <-m.maintStop:
			return
		case <-m.handoffWake:
		}
		t.Reset(handoffTick)
		for {
			select {
			case <-m.maintStop:
				t.Stop()
				return
			case <-t.C:
			}
			var active bool
			if subs, active = m.checkHandoffs(subs[:0]); active {
				continue
			}
			// Nothing since the last look: sleep. A reader that started a
			// handler after that look saw the check armed and did not wake
			// it: look once more after disarming.
			m.handoffArmed.Store(false)
			if subs, active = m.checkHandoffs(subs[:0]); !active {
				break
			}
			m.handoffArmed.Store(true)
		}
		t.Stop()
	}
}

// checkHandoffs looks at every reader once, takes the role of those found
// in the same handler call as at the last look, switches readers found busy
// with handlers at busyLooks looks in a row to queueing (and back once the
// queues are empty and idle), and reports whether any reader ran handlers
// since the last look or queues every event. subs is scratch space,
// returned for reuse.
func (m *Manager) checkHandoffs(subs []*nodeSub) ([]*nodeSub, bool) {
	m.mu.Lock()
	for _, ns := range m.subs {
		subs = append(subs, ns)
	}
	m.mu.Unlock()
	active := false
	idle := -1 // unknown yet: whether every queue is empty and idle
	for _, ns := range subs {
		v := ns.handling.Load()
		// Busy: in a handler now, and handlers slow enough that queueing
		// costs little beside them (at most busyCalls since the last look).
		if v&1 == 1 && (v-ns.seen)/2 <= busyCalls {
			ns.busy++
			if ns.busy >= busyLooks && !ns.queued.Load() {
				ns.queued.Store(true)
			}
		} else {
			ns.busy = 0
		}
		if ns.queued.Load() {
			active = true
			if idle < 0 {
				idle = 1
				for _, q := range m.queues {
					if q.gate.Load() != 0 {
						idle = 0
						break
					}
				}
			}
			if idle == 1 && v&1 == 0 {
				ns.queued.Store(false)
			}
		}
		if v != ns.seen {
			ns.seen, active = v, true
			continue
		}
		if v&1 == 0 {
			continue
		}
		active = true
		if ns.handling.CompareAndSwap(v, v+1) {
			ns.seen = v + 1
			ns.busy = 0
			m.stats.handoffs.Add(1)
			ns.takeOver()
		}
	}
	clear(subs)
	return subs, active
}
