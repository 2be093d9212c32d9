package keyspace

import (
	"sync"
	"sync/atomic"
	"time"
)

// napTime is how long a handler goroutine that has just worked through
// events waits for more before it parks (see queue.run).
var napTime = 100 * time.Microsecond

// queue is the bounded FIFO of one handler goroutine.
//
// Readers (the subscriber goroutines) append to buf under mu. The handler
// goroutine takes everything waiting in one step (a batch, cur) and claims
// the batch's events one by one with the atomic next, so that
// OverflowDropOldest can claim (drop) the oldest event not yet started even
// when it is already in the batch. The capacity counts the events waiting
// in buf and the unclaimed rest of cur; the event being handled does not
// count.
//
// Waking a parked goroutine costs far more than handing over an event, and
// a reader that wakes the handler goroutine for every event of a storm
// spends most of its time doing that. So the handler goroutine, once it has
// worked through a batch, naps (napTime) instead of parking and the readers
// leave it alone while events keep coming; it parks, to be woken by the next
// event, only after a nap that brought nothing. A reader wakes a napping
// goroutine early when the queue is half full or a reader waits for room.
//
// Cheaper still is no hand-off at all: while the queue is empty and the
// handler goroutine idle, a reader runs the event's handlers itself
// (tryInline, endInline) and the handler goroutine stays parked. The queue
// has one runner at a time, the handler goroutine (gateBusy) or a reader
// (gateInline), so its events are handled one after the other and in order:
// an event that arrives while a reader runs handlers inline is queued, and
// the handler goroutine takes over the queue when the reader is done. A
// reader that spends long in a handler loses its role as reader to a new
// goroutine (see handoff.go), which queues the events behind it.
type queue struct {
	m   *Manager
	cap int

	mu      sync.Mutex
	buf     []item // waiting: buf[head:]
	head    int
	spare   []item // an empty array for the next buf
	cur     []item // the batch being worked through
	parked  bool   // the handler goroutine waits for wake, without timeout
	napping bool   // the handler goroutine waits for wake or its nap timer
	closed  bool
	room    chan struct{} // while readers wait for room (OverflowBlock); closed when there is
	wake    chan struct{} // 1-buffered; sent to exactly when parked or napping turns false

	// gate says who runs the queue's handlers and whether events wait
	// (gateInline, gateBusy, gateWaiting). Zero means idle and empty: a
	// reader claims it with a compare-and-swap from zero (tryInline) and,
	// when nothing was queued meanwhile, gives it back with one to zero
	// (endInline), both without mu. Every other change happens under mu.
	gate atomic.Uint32

	_          [64]byte     // next is written by the handler goroutine for every event
	next       atomic.Int64 // next index of cur to claim
	roomWanted atomic.Bool  // room != nil
	_          [64 - 9]byte
}

// The bits of queue.gate.
const (
	gateInline  = 1 << iota // a reader runs an event's handlers on its own goroutine
	gateBusy                // the handler goroutine works through a batch
	gateWaiting             // events wait in buf
)

func newQueue(m *Manager, capacity int) *queue {
	return &queue{m: m, cap: capacity, wake: make(chan struct{}, 1)}
}

// unstartedLocked is the number of events of cur not claimed yet.
func (q *queue) unstartedLocked() int {
	n := int64(len(q.cur)) - q.next.Load()
	if n < 0 {
		return 0
	}
	return int(n)
}

// fullLocked reports whether the queue holds cap events.
func (q *queue) fullLocked() bool {
	waiting := len(q.buf) - q.head
	if waiting+len(q.cur) < q.cap {
		return false // without reading next, which the handler goroutine writes
	}
	return waiting+q.unstartedLocked() >= q.cap
}

// queuedLocked is the number of events waiting for the handler goroutine.
func (q *queue) queuedLocked() int {
	return len(q.buf) - q.head + q.unstartedLocked()
}

// wakeLocked wakes the handler goroutine if it waits.
func (q *queue) wakeLocked() {
	if q.parked || q.napping {
		q.parked, q.napping = false, false
		q.wake <- struct{}{}
	}
}

// tryInline reports whether the caller, a reader, may run the handlers of
// its event itself: the queue is empty and nobody runs its handlers. If so,
// the caller must call endInline when they returned.
func (q *queue) tryInline() bool {
	return q.gate.CompareAndSwap(0, gateInline)
}

// endInline ends a reader's inline run and wakes the handler goroutine for
// the events queued meanwhile.
func (q *queue) endInline() {
	if q.gate.CompareAndSwap(gateInline, 0) {
		return // nothing was queued meanwhile
	}
	q.mu.Lock()
	q.gate.And(^uint32(gateInline))
	if q.head < len(q.buf) {
		q.wakeLocked()
	}
	q.mu.Unlock()
}

// dropOldestLocked discards the oldest event not yet started and reports
// whether there was one.
func (q *queue) dropOldestLocked() bool {
	if q.next.Load() < int64(len(q.cur)) {
		if q.next.Add(1)-1 < int64(len(q.cur)) {
			return true
		}
	}
	if q.head < len(q.buf) {
		q.buf[q.head] = item{}
		q.head++
		return true
	}
	return false
}

// push queues it, applying the overflow policy when the queue is full. A
// reader blocked by OverflowBlock gives up when dead is closed: the
// connection it read it from was dropped (the event is counted as dropped:
// the reconnect's OnGap covers it) or the subscriber stopped (counted as
// discarded).
func (q *queue) push(it item, dead <-chan struct{}) {
	m := q.m
	q.mu.Lock()
	for q.fullLocked() {
		switch m.opts.Overflow {
		case OverflowDropNewest:
			q.mu.Unlock()
			m.stats.dropped.Add(1)
			return
		case OverflowDropOldest:
			if q.dropOldestLocked() {
				m.stats.dropped.Add(1)
			}
		default: // OverflowBlock
			if q.room == nil {
				q.room = make(chan struct{})
				q.roomWanted.Store(true)
			}
			room := q.room
			q.wakeLocked()
			q.mu.Unlock()
			select {
			case <-room:
			case <-dead:
				if it.ns != nil && it.ns.isStopped() {
					m.stats.discarded.Add(1)
				} else {
					m.stats.dropped.Add(1)
				}
				return
			}
			q.mu.Lock()
		}
	}
	if len(q.buf) == cap(q.buf) && q.head > 0 {
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf, q.head = q.buf[:n], 0
	}
	q.buf = append(q.buf, it)
	q.gate.Or(gateWaiting)
	if q.gate.Load()&gateInline == 0 && (q.parked || q.napping && (q.queuedLocked() >= q.cap/2 || q.room != nil)) {
		q.wakeLocked() // (while a reader runs handlers inline, endInline wakes it)
	}
	q.mu.Unlock()
}

// freeRoomLocked lets waiting readers go on once the queue is at most half
// full.
func (q *queue) freeRoomLocked() {
	if q.room != nil && q.queuedLocked() <= q.cap/2 {
		close(q.room)
		q.room = nil
		q.roomWanted.Store(false)
	}
}

// close makes the handler goroutine return once the queue is empty.
func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.wakeLocked()
	q.mu.Unlock()
}

// queued is the number of events waiting for the handler goroutine.
func (q *queue) queued() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.queuedLocked()
}

// run is the handler goroutine: it takes the waiting events as a batch,
// handles them in order, and waits (naps, then parks) when there are none.
func (q *queue) run() {
	m := q.m
	defer m.workers.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var cur []item
	hot := false // the last look found events: nap before parking
	for {
		for {
			i := q.next.Add(1) - 1
			if i >= int64(len(cur)) {
				break
			}
			it := cur[i]
			if m.abandon.Load() {
				m.stats.discarded.Add(1)
			} else {
				m.handle(it)
			}
			if q.roomWanted.Load() {
				q.mu.Lock()
				q.freeRoomLocked()
				q.mu.Unlock()
			}
		}
		q.mu.Lock()
		// cur is done: its array becomes the next buf's.
		clear(cur)
		if q.spare == nil || cap(cur) > cap(q.spare) {
			q.spare = cur[:0]
		}
		cur = nil
		if q.head < len(q.buf) && q.gate.Load()&gateInline == 0 {
			cur = q.buf[q.head:]
			q.buf, q.head = q.spare, 0
			q.spare = nil
			q.cur = cur
			q.next.Store(0)
			q.gate.Store(gateBusy) // buf is empty now; no reader can be inline
			q.freeRoomLocked()
			q.mu.Unlock()
			hot = true
			continue
		}
		q.cur = nil
		q.next.Store(0)
		if q.head < len(q.buf) {
			// A reader runs handlers inline (it claimed the gate while we
			// napped): its endInline wakes us.
			q.parked = true
			q.mu.Unlock()
			<-q.wake
			continue
		}
		q.buf, q.head = q.buf[:0], 0
		q.gate.CompareAndSwap(gateBusy, 0) // idle and empty: readers may run handlers
		if q.closed {
			q.mu.Unlock()
			return
		}
		if hot {
			hot = false
			q.napping = true
			q.mu.Unlock()
			timer.Reset(napTime)
			woken := false
			select {
			case <-q.wake:
				woken = true
			case <-timer.C:
			}
			timer.Stop()
			q.mu.Lock()
			if q.napping {
				q.napping = false // the nap ended: nobody sent a wake
			} else if !woken {
				<-q.wake // a reader woke it as the nap ended
			}
			q.mu.Unlock()
			continue
		}
		q.parked = true
		q.mu.Unlock()
		<-q.wake
	}
}
