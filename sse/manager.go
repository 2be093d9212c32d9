package sse

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/dedicated"
)

// owner names the manager's connections in redisleak reports.
const owner = "sse"

// publishScript appends the event to the history stream and publishes it in
// one atomic step, so that the order of the live messages is the order of
// the stream ids: every subscriber can deduplicate by id alone. When the
// stream does not exist (a new namespace, or Redis lost its data), it first
// starts a new history: an origin marker entry whose id is stored in the
// origin key.
// KEYS[1] history stream, KEYS[2] live channel, KEYS[3] origin (same slot).
// ARGV: maxlen, topic, event type, data, "PUBLISH" or "SPUBLISH".
var publishScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[3], redis.call('XADD', KEYS[1], '*', 'm', 'origin'))
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 't', ARGV[2], 'e', ARGV[3], 'd', ARGV[4])
redis.call(ARGV[5], KEYS[2], id .. '\n' .. ARGV[2] .. '\n' .. ARGV[3] .. '\n' .. ARGV[4])
return id
`)

// historyScript returns the origin of the history (the id of the marker
// that started it) and its newest entry id. Without a stream it starts a
// new history as publishScript does; an empty stream gets a marker, so
// that a reset always has a real id to hand out. A stream without an
// origin key (written by an older version) gets the origin "0-0": unknown.
// KEYS[1] history stream, KEYS[2] origin.
var historyScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  local o = redis.call('XADD', KEYS[1], '*', 'm', 'origin')
  redis.call('SET', KEYS[2], o)
  return {o, o}
end
local o = redis.call('GET', KEYS[2])
if not o then
  o = '0-0'
  redis.call('SET', KEYS[2], o)
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then return {o, last[1][1]} end
return {o, redis.call('XADD', KEYS[1], '*', 'm', '1')}
`)

// history runs historyScript on c.
func (m *Manager) history(ctx context.Context, c redis.Scripter) (origin, newest streamID, err error) {
	res, err := historyScript.Run(ctx, c, []string{m.stream, m.originKey}).StringSlice()
	if err != nil {
		return streamID{}, streamID{}, err
	}
	var ok1, ok2 bool
	if len(res) == 2 {
		origin, ok1 = parseID(res[0])
		newest, ok2 = parseID(res[1])
	}
	if !ok1 || !ok2 {
		return streamID{}, streamID{}, fmt.Errorf("sse: unexpected history ids %q", res)
	}
	return origin, newest, nil
}

// Reset reasons (the data of a reset event).
const (
	whyMalformed   = "malformed cursor"
	whyUnknown     = "unknown cursor"
	whyTrimmed     = "cursor older than the retained history"
	whyLost        = "history lost: Redis lost its data; the events that follow are the new history from its start"
	whyLostTrimmed = "history lost: Redis lost its data, and the new history is trimmed past its start"
)

// Manager serves Server-Sent Event streams (ServeHTTP) and publishes events
// (Publish) through Redis, so that an event published on any instance
// reaches the subscribers of its topic on every instance sharing the
// Namespace.
//
// A Manager holds one pub/sub connection and, on a *redis.Client, one
// command connection (used to fill gaps after the subscriber reconnects) for
// its lifetime; both are acquired with redisleak.WithLongLived and owner
// "sse". All methods are safe for concurrent use.
type Manager struct {
	rdb       redis.UniversalClient
	opts      Options
	stream    string
	channel   string
	originKey string
	pubCmd    string

	ctx    context.Context // long-lived, owner "sse"; canceled by Close
	cancel context.CancelFunc
	ps     *redis.PubSub
	cmd    *dedicated.Conn

	// lastDelivered is the id of the last event fanned out (run goroutine
	// only); lastFanned publishes it to heartbeats. origin is the origin of
	// the history the manager is following (run goroutine only).
	lastDelivered streamID
	origin        streamID
	lastFanned    atomic.Pointer[streamID]

	mu      sync.RWMutex
	closed  bool
	topics  map[string]map[*client]struct{}
	clients map[*client]struct{}
	perAddr map[string]int
	drained chan struct{} // closed once closed && no clients

	closeOnce sync.Once
	runDone   chan struct{}

	stats counters
}

// NewManager starts a manager on rdb: it subscribes to the namespace's live
// channel and waits for the subscription before returning, so events
// published after NewManager returns reach its clients. rdb may be a
// *redis.Client, *redis.ClusterClient or any other UniversalClient; it is
// not closed by Close. Invalid options are an error wrapping
// ErrInvalidOptions.
func NewManager(rdb redis.UniversalClient, opts Options) (*Manager, error) {
	if rdb == nil {
		return nil, fmt.Errorf("%w: nil Redis client", ErrInvalidOptions)
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Manager{
		rdb:       rdb,
		opts:      o,
		stream:    "{" + o.Namespace + "}:history",
		channel:   "{" + o.Namespace + "}:live",
		originKey: "{" + o.Namespace + "}:origin",
		pubCmd:    "PUBLISH",
		topics:    map[string]map[*client]struct{}{},
		clients:   map[*client]struct{}{},
		perAddr:   map[string]int{},
		drained:   make(chan struct{}),
		runDone:   make(chan struct{}),
	}
	if o.Sharded {
		m.pubCmd = "SPUBLISH"
	}
	m.ctx, m.cancel = context.WithCancel(redisleak.WithOwner(redisleak.WithLongLived(context.Background()), owner))
	startCtx, cancelStart := context.WithTimeout(m.ctx, 30*time.Second)
	defer cancelStart()

	m.cmd = dedicated.New(rdb, dedicated.Options{Owner: owner, ErrClosed: ErrClosed})
	// Where the live feed starts: events up to here are history.
	var start streamID
	err = m.onCmd(startCtx, func(ctx context.Context, c redis.Cmdable) error {
		var err error
		m.origin, start, err = m.history(ctx, c)
		return err
	})
	if err != nil {
		m.cancel()
		_ = m.cmd.Close()
		return nil, fmt.Errorf("sse: reading history %s: %w", m.stream, err)
	}
	m.lastDelivered = start
	m.lastFanned.Store(&start)

	if o.Sharded {
		m.ps = rdb.SSubscribe(m.ctx, m.channel)
	} else {
		m.ps = rdb.Subscribe(m.ctx, m.channel)
	}
	// The confirmation of the first subscription; later ones mean the
	// subscriber reconnected and a gap must be filled.
	if _, err := m.ps.Receive(startCtx); err != nil {
		m.cancel()
		_ = m.ps.Close()
		_ = m.cmd.Close()
		return nil, fmt.Errorf("sse: subscribing to %s: %w", m.channel, err)
	}
	ch := m.ps.ChannelWithSubscriptions(
		redis.WithChannelSize(4096),
		redis.WithChannelHealthCheckInterval(5*time.Second),
	)
	go m.run(ch)
	return m, nil
}

// Namespace returns the namespace the manager publishes and subscribes in.
func (m *Manager) Namespace() string { return m.opts.Namespace }

// Publish appends e to the namespace's history and sends it to every
// subscriber of topic on every manager of the namespace. It returns the id
// the subscribers see (the history stream's entry id, "<ms>-<seq>"); a
// client that resumes from that id receives what follows it, on all its
// topics. e.ID must be empty; e.Event must not contain CR, LF or NUL; e.Data
// must not contain NUL. Publish does not wait for any client.
func (m *Manager) Publish(ctx context.Context, topic string, e Event) (string, error) {
	if err := checkTopic(topic); err != nil {
		return "", err
	}
	if err := checkEvent(e); err != nil {
		return "", err
	}
	m.mu.RLock()
	closed := m.closed
	m.mu.RUnlock()
	if closed {
		return "", ErrClosed
	}
	id, err := publishScript.Run(ctx, m.rdb, []string{m.stream, m.channel, m.originKey},
		m.opts.HistorySize, topic, e.Event, e.Data, m.pubCmd).Text()
	if err != nil {
		return "", fmt.Errorf("sse: publish to %q: %w", topic, err)
	}
	m.stats.published.Add(1)
	return id, nil
}

// Close ends every stream (a browser reconnects, to another instance if
// this one is gone), stops the subscriber, releases the manager's
// connections and waits until every ServeHTTP call has returned or ctx is
// done (then it returns ctx.Err()). Requests arriving after Close get a
// "retry:" hint and an empty stream. Close may be called more than once;
// later calls wait for the same drain. Use it with
// http.Server.RegisterOnShutdown, since Server.Shutdown does not end
// streaming responses by itself:
//
//	srv.RegisterOnShutdown(func() { _ = m.Close(context.Background()) })
func (m *Manager) Close(ctx context.Context) error {
	m.closeOnce.Do(func() {
		m.mu.Lock()
		m.closed = true
		clients := make([]*client, 0, len(m.clients))
		for c := range m.clients {
			clients = append(clients, c)
		}
		if len(m.clients) == 0 {
			close(m.drained)
		}
		m.mu.Unlock()
		for _, c := range clients {
			c.abort()
		}
		m.cancel()
		_ = m.ps.Close()
		<-m.runDone
		_ = m.cmd.Close()
	})
	select {
	case <-m.drained:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run reads the live channel until Close: it fans messages out and fills
// the gap after every resubscription.
func (m *Manager) run(ch <-chan interface{}) {
	defer close(m.runDone)
	for {
		select {
		case <-m.ctx.Done():
			return
		case msg, ok := <-ch:
			if !ok {
				return
			}
			switch msg := msg.(type) {
			case *redis.Subscription:
				if msg.Kind == "subscribe" || msg.Kind == "ssubscribe" {
					m.stats.resubscribes.Add(1)
					m.fillGap()
				}
			case *redis.Message:
				f, ok := parseMessage(msg.Payload)
				if !ok {
					m.report(fmt.Errorf("sse: malformed message on %s", m.channel))
					continue
				}
				m.stats.received.Add(1)
				m.deliver(f)
			}
		}
	}
}

// parseMessage decodes "<id>\n<topic>\n<event>\n<data>" into a frame.
func parseMessage(p string) (*frame, bool) {
	idS, rest, ok1 := strings.Cut(p, "\n")
	topic, rest, ok2 := strings.Cut(rest, "\n")
	typ, data, ok3 := strings.Cut(rest, "\n")
	id, ok4 := parseID(idS)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return nil, false
	}
	return &frame{id: id, topic: topic, buf: encodeEvent(make([]byte, 0, len(data)+len(idS)+len(typ)+32), idS, typ, data)}, true
}

// entryFrame decodes a history entry; ok is false for entries that are not
// events (markers).
func entryFrame(x redis.XMessage) (*frame, bool) {
	id, ok := parseID(x.ID)
	if !ok {
		return nil, false
	}
	topic, _ := x.Values["t"].(string)
	if topic == "" {
		return &frame{id: id}, false
	}
	typ, _ := x.Values["e"].(string)
	data, _ := x.Values["d"].(string)
	return &frame{id: id, topic: topic, buf: encodeEvent(nil, x.ID, typ, data)}, true
}

// deliver fans f out to the clients of its topic without ever waiting for
// one; f older than what was delivered already (a gap-fill duplicate) is
// dropped. Run goroutine only.
func (m *Manager) deliver(f *frame) {
	if !m.lastDelivered.less(f.id) {
		return
	}
	m.lastDelivered = f.id
	m.fanOut(f, false)
}

// fanOut queues f for the clients of its topic, or for every attached
// client with all (a reset), and applies OnFull to those whose queue is
// full. Run goroutine only.
func (m *Manager) fanOut(f *frame, all bool) {
	var full []*client
	queue := func(c *client) {
		select {
		case c.queue <- f:
			if all {
				m.stats.resets.Add(1)
			} else {
				m.stats.deliveries.Add(1)
			}
		default:
			full = append(full, c)
		}
	}
	m.mu.RLock()
	if all {
		for c := range m.clients {
			if m.attachedLocked(c) {
				queue(c)
			}
		}
	} else {
		for c := range m.topics[f.topic] {
			queue(c)
		}
	}
	m.mu.RUnlock()
	id := f.id
	m.lastFanned.Store(&id)
	for _, c := range full {
		m.stats.drops.Add(1)
		if m.opts.OnFull == DropEvents && !all {
			continue
		}
		if m.detach(c) {
			m.stats.slowDisconnects.Add(1)
			c.kick(kickSlow)
		}
	}
}

// fillGap delivers the history entries after the last delivered one: the
// events published while the subscriber was reconnecting. It retries until
// it succeeds or the manager closes. Run goroutine only.
func (m *Manager) fillGap() {
	backoff := 50 * time.Millisecond
	for {
		n, err := m.fillGapOnce()
		if err == nil {
			if n > 0 {
				m.stats.gapFills.Add(1)
				m.stats.gapEvents.Add(int64(n))
			}
			return
		}
		m.report(fmt.Errorf("sse: filling the gap after resubscribing: %w", err))
		select {
		case <-m.ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 2*time.Second {
			backoff *= 2
		}
	}
}

func (m *Manager) fillGapOnce() (int, error) {
	n := 0
	// Did Redis lose the history (a restart without persistence)? Then
	// the gap is the whole new history: the streams get one reset saying
	// so, and every event of the new history.
	var origin streamID
	err := m.onCmd(m.ctx, func(ctx context.Context, c redis.Cmdable) error {
		var err error
		origin, _, err = m.history(ctx, c)
		return err
	})
	if err != nil {
		return 0, err
	}
	if origin != m.origin {
		m.stats.historyLosses.Add(1)
		m.origin = origin
		var first []redis.XMessage
		err := m.onCmd(m.ctx, func(ctx context.Context, c redis.Cmdable) error {
			var err error
			first, err = c.XRangeN(ctx, m.stream, origin.String(), origin.String(), 1).Result()
			return err
		})
		if err != nil {
			return 0, err
		}
		if len(first) == 0 {
			// The new history is already trimmed past its start: the
			// browsers resume from their cursors and get a reset.
			m.resyncAll()
			return 0, nil
		}
		m.report(fmt.Errorf("sse: the history of %s was lost (Redis lost its data); sending reset to every stream and the new history", m.stream))
		m.fanOut(&frame{id: origin, buf: encodeEvent(nil, origin.String(), ResetEvent, whyLost)}, true)
		m.lastDelivered = origin
	}
	for first := true; ; first = false {
		var entries []redis.XMessage
		// The first read includes the last delivered entry: if it is gone,
		// the history was trimmed past it and events may be lost.
		from := m.lastDelivered.next()
		if first && !m.lastDelivered.isZero() {
			from = m.lastDelivered
		}
		err := m.onCmd(m.ctx, func(ctx context.Context, c redis.Cmdable) error {
			var err error
			entries, err = c.XRangeN(ctx, m.stream, from.String(), "+", replayBatch).Result()
			return err
		})
		if err != nil {
			return n, err
		}
		if first && !m.lastDelivered.isZero() {
			if len(entries) > 0 && entries[0].ID == m.lastDelivered.String() {
				entries = entries[1:]
			} else {
				m.resyncAll()
			}
		}
		for _, x := range entries {
			f, ok := entryFrame(x)
			if !ok {
				continue
			}
			m.deliver(f)
			n++
		}
		if len(entries) < replayBatch-1 {
			return n, nil
		}
		// Markers are skipped by deliver's bookkeeping; move past them too.
		if last, ok := parseID(entries[len(entries)-1].ID); ok && m.lastDelivered.less(last) {
			m.lastDelivered = last
		}
	}
}

// resyncAll ends every stream after a gap the history no longer covers:
// each browser reconnects with its cursor and gets an exact replay or a
// reset. Run goroutine only.
func (m *Manager) resyncAll() {
	m.mu.Lock()
	var all []*client
	for c := range m.clients {
		if m.detachLocked(c) {
			all = append(all, c)
		}
	}
	m.mu.Unlock()
	m.stats.resyncs.Add(1)
	m.report(fmt.Errorf("sse: the live feed missed events no longer in the history; ending %d streams so that they resume from their cursors", len(all)))
	for _, c := range all {
		c.kick(kickResync)
	}
}

// report hands err to Options.OnError.
func (m *Manager) report(err error) {
	if m.opts.OnError == nil || err == nil {
		return
	}
	m.opts.OnError(err)
}

// onCmd runs f on the command connection: a dedicated Conn on a
// *redis.Client (acquired with the long-lived mark and owner "sse",
// replaced after a network error), short pool holds otherwise.
func (m *Manager) onCmd(ctx context.Context, f func(context.Context, redis.Cmdable) error) error {
	return m.cmd.Do(ctx, func(ctx context.Context, h dedicated.Handle) error { return f(ctx, h.Cmd) })
}
