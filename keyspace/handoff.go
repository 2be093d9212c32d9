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
// The check sleeps while no reader runs handlers, and the first one to do
// so wakes it (armHandoff).

// handoffTick is how often the hand-off check looks at the readers.
var handoffTick = 10 * time.Millisecond

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
// in the same handler call as at the last look, and reports whether any ran
// handlers since the last look. subs is scratch space, returned for reuse.
func (m *Manager) checkHandoffs(subs []*nodeSub) ([]*nodeSub, bool) {
	m.mu.Lock()
	for _, ns := range m.subs {
		subs = append(subs, ns)
	}
	m.mu.Unlock()
	active := false
	for _, ns := range subs {
		v := ns.handling.Load()
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
			m.stats.handoffs.Add(1)
			ns.takeOver()
		}
	}
	clear(subs)
	return subs, active
}
