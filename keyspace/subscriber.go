package keyspace

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// confirmWait waits for PSUBSCRIBE confirmations of a set of patterns.
type confirmWait struct {
	left   map[string]bool
	done   chan struct{}
	onDone func() // run on the subscriber goroutine once all are confirmed
}

// nodeSub is the subscriber of one server (one primary in a cluster): a
// go-redis PubSub read by its own goroutine, replaced by a new one (config
// re-checked, patterns re-subscribed, OnGap) whenever the connection fails.
type nodeSub struct {
	m      *Manager
	addr   string
	client *redis.Client
	cfg    *nodeConfig

	mu          sync.Mutex
	ps          *redis.PubSub // nil while disconnected
	dead        chan struct{} // closed when ps is dropped or the subscriber stops
	connectedAt time.Time     // when ps was subscribed
	everSubbed  bool          // a connection was made once
	lostAt      time.Time     // when the last connection was dropped
	lostErr     error         // why
	waits       []*confirmWait
	stopped     bool

	// traffic is set by the reader when it read something and cleared by
	// the health check when it looks (a load per message, a store only
	// after a look).
	traffic atomic.Bool
	// ponged is set by the reader when it read a PONG, cleared by the
	// health check.
	ponged atomic.Bool
	// handling is odd while the reader runs handlers on its own goroutine.
	// Whoever moves it from odd to even ends that run: the reader when the
	// handlers returned, or the hand-off check (handoff.go), which then
	// starts a new reader; the old one returns once its handlers did.
	handling atomic.Uint64
	seen     uint64 // handling at the hand-off check's last look (its own)
	busy     int    // looks in a row that found the reader in a handler (the check's own)
	// queued is set by the hand-off check while the reader must queue every
	// event instead of running handlers itself (handlers keep it busy).
	queued atomic.Bool

	// The reader's state, passed on with the role.
	failures int           // connections in a row that died young
	cleared  *redis.PubSub // the connection whose read deadline was cleared
	readDead chan struct{} // the dead channel of the connection being read

	created time.Time // when the subscriber was made

	readers sync.WaitGroup // the reader, and one taken over that still runs handlers
	stopCh  chan struct{}
	done    chan struct{}
	started bool
}

func newNodeSub(m *Manager, c *redis.Client) *nodeSub {
	addr := c.Options().Addr
	return &nodeSub{
		m: m, addr: addr, client: c,
		cfg:     newNodeConfig(m, addr, c),
		created: time.Now(),
		stopCh:  make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// connect checks the server setting, opens a PubSub and sends PSUBSCRIBE for
// every pattern the handlers need. It returns once the command is written;
// the returned wait is done when the server confirmed them all. ctx must
// carry the long-lived mark: the subscriber connection is dialed with it.
// With initial, a config problem is returned; otherwise it is reported and
// the subscription goes ahead.
func (ns *nodeSub) connect(ctx context.Context, initial bool, onDone func()) (*confirmWait, error) {
	if _, _, err := ns.cfg.ensure(ctx); err != nil {
		if initial || errors.Is(err, ErrClosed) {
			return nil, err
		}
		ns.m.report(err)
	}
	ps := ns.client.PSubscribe(ctx)
	ns.mu.Lock()
	if ns.stopped {
		ns.mu.Unlock()
		_ = ps.Close()
		return nil, ErrClosed
	}
	patterns := ns.m.routes.Load().patterns
	if onDone != nil {
		// A reconnect whose subscription was never confirmed is superseded
		// by this one: one OnGap, not one per attempt.
		kept := ns.waits[:0]
		for _, old := range ns.waits {
			if old.onDone == nil {
				kept = append(kept, old)
			}
		}
		clear(ns.waits[len(kept):])
		ns.waits = kept
	}
	w := ns.addWaitLocked(patterns, onDone)
	var err error
	if len(patterns) > 0 {
		err = ps.PSubscribe(ctx, patterns...)
	}
	if err != nil {
		ns.removeWaitLocked(w)
		ns.mu.Unlock()
		_ = ps.Close()
		return nil, &NodeError{Node: ns.addr, Op: "subscribe", Err: err}
	}
	ns.ps = ps
	ns.dead = make(chan struct{})
	ns.connectedAt = time.Now()
	ns.everSubbed = true
	ns.mu.Unlock()
	return w, nil
}

// subscribeMore subscribes the current connection to new patterns (a handler
// added after Start). When disconnected it does nothing: the reconnect
// subscribes every pattern.
func (ns *nodeSub) subscribeMore(ctx context.Context, patterns []string) *confirmWait {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.ps == nil || ns.stopped {
		return nil
	}
	w := ns.addWaitLocked(patterns, nil)
	if err := ns.ps.PSubscribe(ctx, patterns...); err != nil {
		ns.removeWaitLocked(w)
		return nil // the receive loop sees the broken connection and reconnects
	}
	return w
}

func (ns *nodeSub) addWaitLocked(patterns []string, onDone func()) *confirmWait {
	w := &confirmWait{left: make(map[string]bool, len(patterns)), done: make(chan struct{}), onDone: onDone}
	for _, p := range patterns {
		w.left[p] = true
	}
	if len(w.left) == 0 {
		close(w.done)
		return w
	}
	ns.waits = append(ns.waits, w)
	return w
}

func (ns *nodeSub) removeWaitLocked(w *confirmWait) {
	for i, x := range ns.waits {
		if x == w {
			ns.waits = append(ns.waits[:i], ns.waits[i+1:]...)
			return
		}
	}
}

// confirmed records a PSUBSCRIBE confirmation and runs the callbacks of the
// waits it completes.
func (ns *nodeSub) confirmed(pattern string) {
	var done []*confirmWait
	ns.mu.Lock()
	kept := ns.waits[:0]
	for _, w := range ns.waits {
		delete(w.left, pattern)
		if len(w.left) == 0 {
			done = append(done, w)
			continue
		}
		kept = append(kept, w)
	}
	for i := len(kept); i < len(ns.waits); i++ {
		ns.waits[i] = nil
	}
	ns.waits = kept
	ns.mu.Unlock()
	for _, w := range done {
		close(w.done)
		if w.onDone != nil {
			w.onDone()
		}
	}
}

// wait blocks until w is complete, ctx ends or the subscriber stops.
func (ns *nodeSub) wait(ctx context.Context, w *confirmWait) error {
	if w == nil {
		return nil
	}
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return &NodeError{Node: ns.addr, Op: "subscribe", Err: ctx.Err()}
	case <-ns.stopCh:
		return ErrClosed
	}
}

// start launches the receive loop.
func (ns *nodeSub) start() {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.stopped {
		return // stop already closed done
	}
	ns.started = true
	go ns.run()
}

func (ns *nodeSub) current() *redis.PubSub {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	return ns.ps
}

// currentConn returns the connection and its dead channel.
func (ns *nodeSub) currentConn() (*redis.PubSub, chan struct{}) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	return ns.ps, ns.dead
}

func (ns *nodeSub) isStopped() bool {
	select {
	case <-ns.stopCh:
		return true
	default:
		return false
	}
}

// run runs the subscriber: the reader (read) and the health check (watch)
// until the subscriber stops.
func (ns *nodeSub) run() {
	defer close(ns.done)
	watchDone := make(chan struct{})
	go ns.watch(watchDone)
	defer func() { <-watchDone }()
	ns.readers.Add(1)
	ns.read()
	ns.readers.Wait() // a reader that took over from this goroutine
}

// takeOver starts a new reader: the current one is stuck in a handler
// (called by the hand-off check, which took its role).
func (ns *nodeSub) takeOver() {
	ns.readers.Add(1) // the old reader has not returned: never from zero
	go ns.read()
}

// read reads the subscription until the subscriber stops or the reader's
// role was taken over. Reads carry no deadline; the health check runs
// beside it in watch. The first read of a connection clears the read
// deadline its handshake left (go-redis's Receive); later reads leave the
// socket's deadline alone (ReceiveTimeout with a negative timeout), which
// saves a SetReadDeadline and a clock read per message. Should go-redis
// replace the connection underneath (it does after a failed write) and
// leave a handshake deadline, the read fails at that deadline and the
// subscriber reconnects as for any error, with OnGap.
func (ns *nodeSub) read() {
	defer ns.readers.Done()
	m := ns.m
	for {
		ps, dead := ns.currentConn()
		if ps == nil {
			if !ns.reconnect(&ns.failures) {
				return
			}
			continue
		}
		ns.readDead = dead
		timeout := time.Duration(-1)
		if ps != ns.cleared {
			timeout, ns.cleared = 0, ps
		}
		msg, err := ps.ReceiveTimeout(m.connCtx, timeout)
		if err != nil {
			if ns.isStopped() {
				return
			}
			// A connection that dies right after it was made (a server
			// that accepts and closes) is retried with growing backoff.
			ns.mu.Lock()
			lived := time.Since(ns.connectedAt)
			ns.mu.Unlock()
			if lived < time.Second {
				ns.failures++
			} else {
				ns.failures = 0
			}
			ns.drop(ps, err)
			continue
		}
		if _, ok := msg.(*redis.Pong); ok {
			ns.ponged.Store(true) // not traffic: watch's probes draw pongs
			continue
		}
		if !ns.traffic.Load() {
			ns.traffic.Store(true)
		}
		switch v := msg.(type) {
		case *redis.Message:
			if !m.deliver(ns, v) {
				return // taken over while in a handler
			}
		case *redis.Subscription:
			if v.Kind == "psubscribe" {
				ns.confirmed(v.Channel)
			}
		}
	}
}

// errNoPong is why watch drops a silent connection.
var errNoPong = errors.New("no reply to PING within the ping interval")

// probeEvery is how often watch probes a connection whose reader is busy
// (see watch); at most PingInterval.
var probeEvery = 250 * time.Millisecond

// watch pings a connection that was silent for PingInterval and drops it
// (so run reconnects) when it stays silent for another interval.
//
// A connection with traffic, or whose reader is held up by a handler, is
// probed every probeEvery with a PING write instead. Its replies are no
// use there (they queue behind the events not read yet), but the write
// fails once the server has closed the connection, as Redis does with a
// subscriber beyond its client-output-buffer-limit for pubsub: the first
// write after the close draws a reset, the next one fails. The connection
// is dropped then, and the events still in the socket with it, so that the
// reconnect, and OnGap, come within a second or so of the disconnect
// rather than once a slow reader has worked through everything the server
// had sent before it.
func (ns *nodeSub) watch(done chan struct{}) {
	defer close(done)
	every := min(probeEvery, ns.m.opts.PingInterval)
	perPing := int((ns.m.opts.PingInterval + every - 1) / every)
	t := time.NewTicker(every)
	defer t.Stop()
	pinged := false
	for tick := 1; ; tick++ {
		select {
		case <-ns.stopCh:
			return
		case <-t.C:
		}
		ps := ns.current()
		if ps == nil {
			pinged = false
			continue
		}
		busy := ns.traffic.Load() || ns.handling.Load()&1 == 1
		if tick%perPing != 0 {
			if busy {
				if err := ps.Ping(ns.m.connCtx); err != nil {
					ns.drop(ps, err)
				}
			}
			continue
		}
		if ns.ponged.Swap(false) && !busy {
			pinged = false // the last ping's (or probe's) answer: alive
			continue
		}
		if ns.traffic.Swap(false) || ns.handling.Load()&1 == 1 {
			// Traffic, or a handler holds up the reading: the connection
			// is not silent.
			pinged = false
			if err := ps.Ping(ns.m.connCtx); err != nil {
				ns.drop(ps, err)
			}
			continue
		}
		if !pinged {
			if err := ps.Ping(ns.m.connCtx); err != nil {
				ns.drop(ps, err)
				continue
			}
			pinged = true
			continue
		}
		pinged = false
		ns.drop(ps, errNoPong)
	}
}

// drop forgets a failed connection; run then reconnects. Only the first
// drop of a connection counts.
func (ns *nodeSub) drop(ps *redis.PubSub, err error) {
	ns.mu.Lock()
	first := ns.ps == ps
	if first {
		ns.ps = nil
		close(ns.dead) // a reader waiting for room stops waiting
		ns.dead = nil
		ns.lostAt, ns.lostErr = time.Now(), err
	}
	ns.mu.Unlock()
	_ = ps.Close()
	if first {
		ns.m.stats.reconnects.Add(1)
		ns.m.report(&NodeError{Node: ns.addr, Op: "receive", Err: err})
	}
}

// reconnect retries connect with backoff (first try at once) until it
// succeeds or the subscriber stops. OnGap runs once the new subscription is
// confirmed.
func (ns *nodeSub) reconnect(failures *int) bool {
	for {
		if *failures > 0 {
			d := 50 * time.Millisecond << min(*failures, 6) // up to 3.2s
			t := time.NewTimer(d)
			select {
			case <-ns.stopCh:
				t.Stop()
				return false
			case <-t.C:
			}
		}
		if ns.isStopped() {
			return false
		}
		ctx, cancel := context.WithTimeout(ns.m.connCtx, 10*time.Second)
		go func() {
			select {
			case <-ns.stopCh:
				cancel() // Close: give up on a slow dial or CONFIG at once
			case <-ctx.Done():
			}
		}()
		ns.mu.Lock()
		g := Gap{Node: ns.addr, Reason: GapReconnect, Since: ns.lostAt, Err: ns.lostErr}
		if !ns.everSubbed {
			g = Gap{Node: ns.addr, Reason: GapNodeJoined, Since: ns.created}
		}
		ns.mu.Unlock()
		onGap := func() {
			g.At = time.Now()
			ns.m.gap(g)
		}
		w, err := ns.connect(ctx, false, onGap)
		cancel()
		if err == nil {
			select {
			case <-w.done: // no patterns: nothing to confirm
				onGap()
			default:
			}
			return true
		}
		if errors.Is(err, ErrClosed) {
			return false
		}
		*failures++
		ns.m.report(err)
	}
}

// stop closes the subscription and waits for the loop to end (and for a
// handler its reader runs). Safe to call twice.
func (ns *nodeSub) stop() {
	ns.signalStop()
	<-ns.done
}

// signalStop closes the subscription and tells the loop to end; done is
// closed when it has. Safe to call twice.
func (ns *nodeSub) signalStop() {
	ns.mu.Lock()
	if ns.stopped {
		ns.mu.Unlock()
		return
	}
	ns.stopped = true
	ps := ns.ps
	ns.ps = nil
	if ns.dead != nil {
		close(ns.dead)
		ns.dead = nil
	}
	started := ns.started
	ns.mu.Unlock()
	close(ns.stopCh)
	if ps != nil {
		_ = ps.Close()
	}
	if !started {
		close(ns.done)
	}
}
