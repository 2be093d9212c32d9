package keyspace

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
)

// Owner is the owner name the manager's connections carry
// (redisleak.WithOwner): they show up under it in the tracker's reports.
const Owner = "keyspace"

const (
	stateNew = iota
	stateStarting
	stateRunning
	stateClosed
)

// item is one event on its way to the handlers (kept small: it is copied
// into and out of the queue, and the queue is scanned by the GC).
type item struct {
	ns         *nodeSub
	pr         *patternRoutes
	key, event string
	channel    string
}

// Manager delivers Redis keyspace notifications to handlers. Create it with
// NewManager, register handlers with Handle or HandleEvents, then Start it;
// Close stops it. All methods are safe for concurrent use.
type Manager struct {
	rdb       redis.UniversalClient
	opts      Options
	flags     flagSet
	ksPrefix  string
	kePrefix  string
	listNodes func(ctx context.Context) ([]*redis.Client, error)

	routes atomic.Pointer[routeTable]

	mu        sync.Mutex
	state     int
	handlers  []*handler
	handleErr error
	subs      map[string]*nodeSub

	connCtx      context.Context // run context with the long-lived mark and owner
	handlerCtx   context.Context // run context without the long-lived mark
	cancelRun    context.CancelFunc
	queues       []*queue
	workers      sync.WaitGroup
	abandon      atomic.Bool
	maintStop    chan struct{}
	maintDone    chan struct{}
	handoffArmed atomic.Bool   // the hand-off check runs (handoff.go)
	handoffWake  chan struct{} // 1-buffered: arms the hand-off check
	handoffDone  chan struct{}
	closeOnce    sync.Once
	closeErr     error
	shutdownOnce sync.Once
	shutdownErr  error

	stats counters
}

// counters: received is written by the subscribers and handled by the
// handler goroutines, for every event; each has its own cache line.
type counters struct {
	received                   atomic.Uint64
	_                          [56]byte
	handled                    atomic.Uint64
	_                          [56]byte
	dropped, discarded, panics atomic.Uint64
	gaps, reconnects, handoffs atomic.Uint64
}

// Stats is a snapshot of a manager's counters.
type Stats struct {
	// Received counts events read from Redis for some handler.
	Received uint64
	// Handled counts events whose handlers have all returned (or panicked).
	Handled uint64
	// Dropped counts events discarded by the overflow policy, and, under
	// OverflowBlock, an event a reader was waiting to queue when its
	// connection was found closed (the gap that follows covers it).
	Dropped uint64
	// Discarded counts queued events not handled because Close's context
	// ended first.
	Discarded uint64
	// Panics counts recovered handler panics.
	Panics uint64
	// Gaps counts OnGap occasions (re-established subscriptions, repaired
	// flags, primaries that joined after Start).
	Gaps uint64
	// Reconnects counts subscriber connections that failed and were replaced.
	Reconnects uint64
	// Handoffs counts the times a handler running on a subscriber's
	// goroutine took so long that reading moved to a new goroutine (see
	// Options.QueueSize).
	Handoffs uint64
	// Nodes is the number of servers subscribed to now.
	Nodes int
	// Queued is the number of events waiting for a handler now.
	Queued int
}

// NewManager returns a manager for rdb, which may be a *redis.Client
// (including a failover client), a *redis.ClusterClient (one subscriber per
// primary, following topology changes) or a *redis.Ring (one per shard).
// Invalid options are an error (ErrBadFlags, ErrInvalidOptions). NewManager
// does not talk to Redis; Start does.
func NewManager(rdb redis.UniversalClient, opts Options) (*Manager, error) {
	if rdb == nil {
		return nil, fmt.Errorf("%w: nil client", ErrUnsupportedClient)
	}
	opts, fs, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Manager{rdb: rdb, opts: opts, flags: fs, subs: map[string]*nodeSub{}}
	m.ksPrefix, m.kePrefix = channelPrefixes(opts.DB)
	switch c := rdb.(type) {
	case *redis.Client:
		m.listNodes = func(context.Context) ([]*redis.Client, error) { return []*redis.Client{c}, nil }
	case *redis.ClusterClient:
		m.listNodes = func(ctx context.Context) ([]*redis.Client, error) {
			return collect(ctx, c.ForEachMaster)
		}
	case *redis.Ring:
		m.listNodes = func(ctx context.Context) ([]*redis.Client, error) {
			return collect(ctx, c.ForEachShard)
		}
	default:
		return nil, fmt.Errorf("%w: %T (want *redis.Client, *redis.ClusterClient or *redis.Ring)", ErrUnsupportedClient, rdb)
	}
	m.routes.Store(buildRoutes(nil, fs, opts.DB))
	return m, nil
}

func collect(ctx context.Context, each func(context.Context, func(context.Context, *redis.Client) error) error) ([]*redis.Client, error) {
	var mu sync.Mutex
	var out []*redis.Client
	err := each(ctx, func(_ context.Context, c *redis.Client) error {
		mu.Lock()
		out = append(out, c)
		mu.Unlock()
		return nil
	})
	return out, err
}

// Handle calls fn for every event on keys matching keyPattern, a Redis glob
// as PSUBSCRIBE takes it ("user:*", "session:[0-9]*"). It may be called
// before or after Start; after Start it returns once every server confirmed
// the new subscription (or after 5 s). Handlers run on the subscriber's
// goroutine while they keep up, else on the manager's handler goroutines
// (see Options.QueueSize), never concurrently for events of the same key,
// and each handler sees the events of one key in order. An invalid argument
// (empty pattern, nil fn) makes the next Start fail, or, after Start, is
// reported to Options.OnError; HandleEvents returns it instead.
func (m *Manager) Handle(keyPattern string, fn func(Event)) {
	if err := m.HandleEvents(keyPattern, fn); err != nil && !errors.Is(err, ErrClosed) {
		m.mu.Lock()
		state := m.state
		if state == stateNew && m.handleErr == nil {
			m.handleErr = err
		}
		m.mu.Unlock()
		if state != stateNew {
			m.report(err)
		}
	}
}

// HandleEvents is Handle restricted to the named events (e.g. EventExpired,
// EventDel); no names means every event. A documented event whose class is
// not in Options.Flags is an error (it would never arrive). With E in the
// flags, a handler with events subscribes to the keyevent channels of those
// events and matches keys locally; otherwise to the keyspace channel of its
// key pattern.
func (m *Manager) HandleEvents(keyPattern string, fn func(Event), events ...string) error {
	h, err := validateHandler(keyPattern, fn, events, m.flags, m.opts.Flags)
	if err != nil {
		return err
	}
	m.mu.Lock()
	if m.state == stateClosed {
		m.mu.Unlock()
		return ErrClosed
	}
	old := m.routes.Load()
	m.handlers = append(m.handlers, h)
	rt := buildRoutes(m.handlers, m.flags, m.opts.DB)
	m.routes.Store(rt)
	var added []string
	for _, p := range rt.patterns {
		if _, ok := old.byPattern[p]; !ok {
			added = append(added, p)
		}
	}
	var subs []*nodeSub
	if (m.state == stateRunning || m.state == stateStarting) && len(added) > 0 {
		subs = m.subList()
	}
	m.mu.Unlock()
	if len(subs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(m.connCtx, 5*time.Second)
	defer cancel()
	waits := make([]*confirmWait, len(subs))
	for i, ns := range subs {
		waits[i] = ns.subscribeMore(ctx, added)
	}
	for i, ns := range subs {
		if err := ns.wait(ctx, waits[i]); err != nil && !errors.Is(err, ErrClosed) {
			m.report(err)
		}
	}
	return nil
}

func (m *Manager) subList() []*nodeSub {
	out := make([]*nodeSub, 0, len(m.subs))
	for _, ns := range m.subs {
		out = append(out, ns)
	}
	return out
}

// Start checks or merges the server setting on every server (per
// Options.Config), subscribes to the channels the handlers need and returns
// once every server confirmed the subscription. ctx bounds only the start;
// the manager runs until Close. Its connections are acquired with
// redisleak.WithLongLived and owner "keyspace". A second Start is
// ErrStarted; after a failed Start the manager is closed (create a new one
// to retry).
func (m *Manager) Start(ctx context.Context) error {
	m.mu.Lock()
	switch m.state {
	case stateClosed:
		m.mu.Unlock()
		return ErrClosed
	case stateNew:
	default:
		m.mu.Unlock()
		return ErrStarted
	}
	if m.handleErr != nil {
		m.state = stateClosed
		m.mu.Unlock()
		return m.handleErr
	}
	m.state = stateStarting
	run, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.cancelRun = cancel
	m.connCtx = redisleak.WithOwner(redisleak.WithLongLived(run), Owner)
	m.handlerCtx = redisleak.WithoutLongLived(run)
	workers := m.opts.Workers
	if m.opts.Inline {
		workers = 0
	}
	m.queues = make([]*queue, workers)
	for i := range m.queues {
		q := newQueue(m, m.opts.QueueSize)
		m.queues[i] = q
		m.workers.Add(1)
		go q.run()
	}
	m.maintStop = make(chan struct{})
	m.maintDone = make(chan struct{})
	m.handoffDone = make(chan struct{})
	if workers > 0 {
		m.handoffWake = make(chan struct{}, 1)
		go m.handoffLoop()
	} else {
		close(m.handoffDone)
	}
	m.mu.Unlock()

	if err := m.startNodes(ctx); err != nil {
		m.mu.Lock()
		m.state = stateClosed
		m.mu.Unlock()
		close(m.maintDone) // the maintenance loop never ran
		_ = m.shutdown(context.Background())
		return err
	}
	m.mu.Lock()
	if m.state == stateClosed { // Close ran meanwhile and is waiting
		m.mu.Unlock()
		close(m.maintDone)
		return ErrClosed
	}
	m.state = stateRunning
	m.mu.Unlock()
	go m.maintain()
	return nil
}

func (m *Manager) startNodes(ctx context.Context) error {
	marked := redisleak.WithOwner(redisleak.WithLongLived(ctx), Owner)
	nodes, err := m.listNodes(marked)
	if err != nil {
		return &NodeError{Node: "topology", Op: "topology", Err: err}
	}
	if len(nodes) == 0 {
		return &NodeError{Node: "topology", Op: "topology", Err: errors.New("no servers to subscribe to")}
	}
	type started struct {
		ns *nodeSub
		w  *confirmWait
	}
	var all []started
	for _, c := range nodes {
		ns := newNodeSub(m, c)
		m.mu.Lock()
		if m.state == stateClosed {
			m.mu.Unlock()
			return ErrClosed
		}
		if _, dup := m.subs[ns.addr]; dup {
			m.mu.Unlock()
			continue
		}
		m.subs[ns.addr] = ns
		m.mu.Unlock()
		w, err := ns.connect(marked, true, nil)
		if err != nil {
			return err
		}
		ns.start()
		all = append(all, started{ns, w})
	}
	for _, s := range all {
		if err := s.ns.wait(ctx, s.w); err != nil {
			return err
		}
	}
	return nil
}

// Close stops the subscribers, lets the handlers finish the queued events
// within ctx (events left when ctx ends are counted in Stats.Discarded and
// ctx's error is returned), restores the server setting when
// Options.RestoreOnClose, and releases the connections. It waits for the
// manager's goroutines (a handler that never returns blocks it), so it
// must not be called from a handler. A second call returns the first
// call's result.
func (m *Manager) Close(ctx context.Context) error {
	m.closeOnce.Do(func() {
		m.mu.Lock()
		prev := m.state
		m.state = stateClosed
		m.mu.Unlock()
		if prev == stateNew {
			return
		}
		m.closeErr = m.shutdown(ctx)
	})
	return m.closeErr
}

// shutdown stops everything Start started; it runs once (a failed Start
// and Close may both ask).
func (m *Manager) shutdown(ctx context.Context) error {
	m.shutdownOnce.Do(func() { m.shutdownErr = m.doShutdown(ctx) })
	return m.shutdownErr
}

func (m *Manager) doShutdown(ctx context.Context) error {
	if m.maintStop != nil {
		select {
		case <-m.maintStop:
		default:
			close(m.maintStop)
		}
		<-m.maintDone
		<-m.handoffDone
	}
	m.mu.Lock()
	subs := m.subList()
	m.subs = map[string]*nodeSub{}
	m.mu.Unlock()
	for _, ns := range subs {
		ns.signalStop()
	}
	// Readers may be running handlers: wait for them within ctx too.
	drained := make(chan struct{})
	go func() {
		for _, ns := range subs {
			<-ns.done
		}
		for _, q := range m.queues {
			q.close()
		}
		m.workers.Wait()
		close(drained)
	}()
	var err error
	select {
	case <-drained:
	case <-ctx.Done():
		m.abandon.Store(true)
		err = ctx.Err()
		<-drained
	}
	restoreCtx := ctx
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		restoreCtx, cancel = context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
	}
	for _, ns := range subs {
		if m.opts.RestoreOnClose {
			if rerr := ns.cfg.restore(redisleak.WithOwner(redisleak.WithLongLived(restoreCtx), Owner)); rerr != nil {
				m.report(rerr)
			}
		}
		ns.cfg.close()
	}
	if m.cancelRun != nil {
		m.cancelRun()
	}
	return err
}

func (m *Manager) running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state == stateRunning
}

// Stats returns a snapshot of the manager's counters. Safe to call at any
// time, also before Start and after Close.
func (m *Manager) Stats() Stats {
	s := Stats{
		Received:   m.stats.received.Load(),
		Handled:    m.stats.handled.Load(),
		Dropped:    m.stats.dropped.Load(),
		Discarded:  m.stats.discarded.Load(),
		Panics:     m.stats.panics.Load(),
		Gaps:       m.stats.gaps.Load(),
		Reconnects: m.stats.reconnects.Load(),
		Handoffs:   m.stats.handoffs.Load(),
	}
	m.mu.Lock()
	s.Nodes = len(m.subs)
	for _, q := range m.queues {
		s.Queued += q.queued()
	}
	m.mu.Unlock()
	return s
}

// Nodes returns the addresses of the servers subscribed to now, sorted.
func (m *Manager) Nodes() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.subs))
	for a := range m.subs {
		out = append(out, a)
	}
	sortStrings(out)
	return out
}

func (m *Manager) report(err error) {
	if m.opts.OnError != nil && err != nil {
		m.opts.OnError(err)
	}
}

func (m *Manager) gap(g Gap) {
	m.stats.gaps.Add(1)
	if m.opts.OnGap != nil {
		m.opts.OnGap()
	}
	if m.opts.OnGapDetail != nil {
		m.opts.OnGapDetail(g)
	}
}

// deliver turns a pub/sub message into an Event and runs its handlers on
// the reader's goroutine when their queue is empty and idle, or queues it.
// It reports false when the reader's role was taken over while it ran
// handlers: the caller must stop reading.
func (m *Manager) deliver(ns *nodeSub, msg *redis.Message) bool {
	pr := m.routes.Load().byPattern[msg.Pattern]
	if pr == nil {
		return true // a pattern no handler needs any more
	}
	it := item{ns: ns, pr: pr, channel: msg.Channel}
	var ok bool
	if pr.keyspace {
		it.key, ok = strings.CutPrefix(msg.Channel, m.ksPrefix)
		it.event = msg.Payload
	} else {
		it.event, ok = strings.CutPrefix(msg.Channel, m.kePrefix)
		it.key = msg.Payload
	}
	if !ok {
		return true
	}
	m.stats.received.Add(1)
	if m.opts.Inline {
		ns.handling.Add(1)
		m.handle(it)
		ns.handling.Add(1)
		return true
	}
	q := m.queues[0]
	if len(m.queues) > 1 {
		q = m.queues[keyHash(it.key)%uint32(len(m.queues))]
	}
	if !ns.queued.Load() && q.tryInline() {
		v := ns.handling.Add(1)
		m.armHandoff()
		m.handle(it)
		q.endInline()
		return ns.handling.CompareAndSwap(v, v+1)
	}
	q.push(it, ns.readDead)
	return true
}

// keyHash is FNV-1a, to spread keys over the handler goroutines.
func keyHash(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// handle runs the handlers of one event.
func (m *Manager) handle(it item) {
	ev := Event{DB: m.opts.DB, Key: it.key, Event: it.event, Node: it.ns.addr, Channel: it.channel, ctx: m.handlerCtx}
	for _, r := range it.pr.routes {
		if r.accepts(&ev) {
			m.call(r.h, ev)
		}
	}
	m.stats.handled.Add(1)
}

func (m *Manager) call(h *handler, ev Event) {
	defer func() {
		if v := recover(); v != nil {
			m.stats.panics.Add(1)
			m.report(&PanicError{Event: ev, Value: v, Stack: debug.Stack()})
		}
	}()
	h.fn(ev)
}
