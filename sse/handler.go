package sse

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
)

// kick reasons.
const (
	kickSlow int32 = iota + 1
	kickClose
	kickResync
)

// client is one open stream.
type client struct {
	queue  chan *frame
	topics []string
	addr   string

	kicked   chan struct{}
	kickOnce sync.Once
	reason   atomic.Int32
	cancel   context.CancelFunc

	// mu serializes deadline changes on rc with the end of the handler.
	mu      sync.Mutex
	rc      *http.ResponseController
	aborted bool
	done    bool
}

func (c *client) wants(topic string) bool {
	for _, t := range c.topics {
		if t == topic {
			return true
		}
	}
	return false
}

// kick asks the handler to end the stream; the first reason wins.
func (c *client) kick(reason int32) {
	c.kickOnce.Do(func() {
		c.reason.Store(reason)
		close(c.kicked)
	})
}

// abort ends the stream now: it cancels its Redis calls and fails a write in
// progress by moving its deadline to the past.
func (c *client) abort() {
	c.kick(kickClose)
	c.cancel()
	c.mu.Lock()
	c.aborted = true
	if !c.done {
		_ = c.rc.SetWriteDeadline(time.Unix(1, 0))
	}
	c.mu.Unlock()
}

// finish marks the handler as returning: rc must not be touched after it.
func (c *client) finish() {
	c.mu.Lock()
	c.done = true
	c.mu.Unlock()
}

var errAborted = errors.New("sse: stream aborted")

// arm sets the write deadline to d from now, unless the stream is aborted.
func (c *client) arm(d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		return errAborted
	}
	_ = c.rc.SetWriteDeadline(time.Now().Add(d))
	return nil
}

// write writes b with a deadline of d from now.
func (c *client) write(w http.ResponseWriter, b []byte, d time.Duration) error {
	if err := c.arm(d); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// flush flushes with a deadline of d from now.
func (c *client) flush(d time.Duration) error {
	if err := c.arm(d); err != nil {
		return err
	}
	return c.rc.Flush()
}

// ServeHTTP serves one event stream. The topics are the repeated query
// parameter "topic"; the cursor is the Last-Event-ID header (sent by a
// reconnecting browser) or else the query parameter "lastEventId" (for a
// first connection, which cannot set headers).
//
// With a cursor, the stream first replays every event of its topics
// published strictly after the cursor, then goes on live without losing or
// repeating an event. A cursor that is malformed, unknown, or older than the
// retained history gets one event of type "reset" whose data says why and
// whose id is the newest id of the history; the stream then goes on live. A
// cursor from a history Redis lost (older than the current history's
// origin) gets a reset whose data starts with "history lost" and whose id
// is the origin, then every event of the new history, then live events.
//
// Answers: 400 for missing, invalid or too many topics, and for more than
// 10,000 query parameters; 405 for methods
// other than GET (and OPTIONS with CORS); Authorize's status when it
// refuses; otherwise 200 and a stream. A connection over a limit, or
// arriving after Close, gets 200 with a "retry:" hint and a closing comment.
func (m *Manager) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if m.cors(w, r) {
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET, OPTIONS")
		http.Error(w, "sse: method not allowed", http.StatusMethodNotAllowed)
		return
	}
	query, err := requestQuery(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	topics, err := requestTopics(query, m.opts.MaxTopics)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if m.opts.Authorize != nil {
		topics, err = m.authorize(r.WithContext(redisleak.WithoutLongLived(r.Context())), topics)
		if err != nil {
			m.stats.rejected.Add(1)
			status := http.StatusForbidden
			var he *HTTPError
			if errors.As(err, &he) && he.Status >= 200 && he.Status <= 599 {
				status = he.Status
			}
			if status == http.StatusNoContent {
				w.WriteHeader(status)
				return
			}
			msg := http.StatusText(status)
			if he != nil && he.Message != "" {
				msg = he.Message
			}
			http.Error(w, msg, status)
			return
		}
	}
	// The stream's own Redis calls (replay) are short holds of owner "sse".
	ctx, cancel := context.WithCancel(redisleak.WithOwner(redisleak.WithoutLongLived(r.Context()), owner))
	defer cancel()
	cursor := r.Header.Get("Last-Event-ID")
	if cursor == "" {
		cursor = query.Get("lastEventId")
	}

	c := &client{
		queue:  make(chan *frame, m.opts.QueueSize),
		topics: topics,
		addr:   m.clientAddr(r),
		kicked: make(chan struct{}),
		cancel: cancel,
		rc:     http.NewResponseController(w),
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	h.Del("Content-Length")
	wt := m.opts.WriteTimeout
	prelude := []byte("retry: " + strconv.FormatInt(m.opts.Retry.Milliseconds(), 10) + "\n")

	if why := m.register(c); why != "" {
		m.stats.rejected.Add(1)
		w.WriteHeader(http.StatusOK)
		_ = c.write(w, encodeComment(prelude, "closing: "+why), wt)
		_ = c.flush(wt)
		c.finish()
		return
	}
	defer func() {
		c.finish()
		m.unregister(c)
	}()
	m.stats.connections.Add(1)
	w.WriteHeader(http.StatusOK)
	if err := c.write(w, encodeComment(prelude, "ok"), wt); err != nil {
		m.stats.writeErrors.Add(1)
		return
	}
	if err := c.flush(wt); err != nil {
		if errors.Is(err, http.ErrNotSupported) {
			m.report(fmt.Errorf("sse: ResponseWriter cannot flush: %w", err))
		}
		m.stats.writeErrors.Add(1)
		return
	}

	last, told, err := m.resume(ctx, w, c, cursor)
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, errAborted) {
			m.report(fmt.Errorf("sse: resuming from %q: %w", cursor, err))
		}
		m.stats.writeErrors.Add(1)
		return
	}
	m.live(ctx, w, c, last, told)
}

// live copies the client's queue to the response until the stream ends.
// Queued events up to last are duplicates; told is the browser's cursor.
func (m *Manager) live(ctx context.Context, w http.ResponseWriter, c *client, last, told streamID) {
	wt := m.opts.WriteTimeout
	hb := time.NewTicker(m.opts.Heartbeat)
	defer hb.Stop()
	fail := func() { m.stats.writeErrors.Add(1) }
	for {
		select {
		case <-c.kicked:
			why := ""
			switch c.reason.Load() {
			case kickSlow:
				why = "closing: client too slow"
			case kickResync:
				why = "closing: resume from your cursor"
			}
			if why != "" {
				d := min(wt, time.Second)
				if c.write(w, encodeComment(nil, why), d) == nil {
					_ = c.flush(d)
				}
			}
			return
		case <-ctx.Done():
			return
		case f := <-c.queue:
			// Write what is queued already (at most 64 events, within one
			// write deadline), then flush once: no event waits.
			if c.arm(wt) != nil {
				return
			}
			wrote := false
			for n := 0; ; n++ {
				if last.less(f.id) {
					if _, err := w.Write(f.buf); err != nil {
						fail()
						return
					}
					last, told, wrote = f.id, f.id, true
				}
				if n == 63 {
					break
				}
				select {
				case f = <-c.queue:
					continue
				default:
				}
				break
			}
			if wrote && c.rc.Flush() != nil {
				fail()
				return
			}
		case <-hb.C:
			b := []byte(":\n")
			// Every event up to lastFanned was queued before it was stored:
			// with the queue empty, this client has all of its events up to
			// there (and up to last, which a replay may have scanned), so
			// the browser's cursor can move on.
			if adv := *m.lastFanned.Load(); len(c.queue) == 0 {
				if last.less(adv) {
					last = adv
				}
				if told.less(last) {
					// An event of its own type: browsers take the id of
					// a block without data too, but eventsource-parser
					// (Node's eventsource) only that of a dispatched
					// event; onmessage never sees a typed event.
					b = append(b, "id: "+last.String()+"\nevent: "+HeartbeatEvent+"\ndata:\n"...)
					told = last
				}
			}
			b = append(b, '\n')
			if c.write(w, b, wt) != nil || c.flush(wt) != nil {
				fail()
				return
			}
		}
	}
}

// resume replays the history after cursor, or sends a reset for a cursor
// that cannot be resumed. It returns the id up to which the client is
// served (live events up to it are duplicates) and the browser's cursor.
func (m *Manager) resume(ctx context.Context, w http.ResponseWriter, c *client, cursor string) (last, told streamID, err error) {
	if cursor == "" {
		return streamID{}, streamID{}, nil
	}
	id, ok := parseID(cursor)
	if !ok {
		last, err = m.resetNewest(ctx, w, c, whyMalformed)
		return last, last, err
	}
	entries, err := m.rdb.XRangeN(ctx, m.stream, id.String(), "+", replayBatch).Result()
	if err != nil {
		return streamID{}, streamID{}, err
	}
	if len(entries) > 0 && entries[0].ID == id.String() {
		m.stats.replays.Add(1)
		return m.replay(ctx, w, c, id, entries)
	}
	origin, newest, err := m.history(ctx, m.rdb)
	if err != nil {
		return streamID{}, streamID{}, err
	}
	if id.less(origin) {
		// The cursor is from a history Redis lost: the client has seen
		// none of the new one. Reset to the new history's origin and
		// replay all of it, unless it is trimmed past its start.
		entries, err = m.rdb.XRangeN(ctx, m.stream, origin.String(), "+", replayBatch).Result()
		if err != nil {
			return streamID{}, streamID{}, err
		}
		if len(entries) == 0 || entries[0].ID != origin.String() {
			err = m.reset(w, c, newest, whyLostTrimmed)
			return newest, newest, err
		}
		m.stats.replays.Add(1)
		if err := m.reset(w, c, origin, whyLost); err != nil {
			return origin, origin, err
		}
		return m.replay(ctx, w, c, origin, entries)
	}
	why := whyUnknown
	oldest, err := m.rdb.XRangeN(ctx, m.stream, "-", "+", 1).Result()
	if err == nil && len(oldest) == 1 {
		if o, ok := parseID(oldest[0].ID); ok && id.less(o) {
			why = whyTrimmed
		}
	}
	err = m.reset(w, c, newest, why)
	return newest, newest, err
}

// replay writes the events of c's topics after from; entries is the first
// batch of the history from from on (inclusive). It returns the id up to
// which the history was scanned and the browser's cursor.
func (m *Manager) replay(ctx context.Context, w http.ResponseWriter, c *client, from streamID, entries []redis.XMessage) (scanned, told streamID, err error) {
	wt := m.opts.WriteTimeout
	scanned, told = from, from
	full := len(entries) == replayBatch
	entries = entries[1:] // from itself
	for {
		for _, x := range entries {
			f, ok := entryFrame(x)
			if f == nil {
				continue
			}
			scanned = f.id
			if !ok || !c.wants(f.topic) {
				continue
			}
			if err := c.write(w, f.buf, wt); err != nil {
				return scanned, told, err
			}
			told = f.id
			m.stats.replayedEvents.Add(1)
		}
		if !full {
			break
		}
		select {
		case <-c.kicked: // too slow, or closing: stop replaying
			return scanned, told, c.flush(wt)
		default:
		}
		entries, err = m.rdb.XRangeN(ctx, m.stream, scanned.next().String(), "+", replayBatch).Result()
		if err != nil {
			return scanned, told, err
		}
		full = len(entries) == replayBatch
	}
	return scanned, told, c.flush(wt)
}

// resetNewest sends a reset carrying the newest history id.
func (m *Manager) resetNewest(ctx context.Context, w http.ResponseWriter, c *client, why string) (streamID, error) {
	_, newest, err := m.history(ctx, m.rdb)
	if err != nil {
		return streamID{}, err
	}
	return newest, m.reset(w, c, newest, why)
}

// reset sends a "reset" event with the given id.
func (m *Manager) reset(w http.ResponseWriter, c *client, id streamID, why string) error {
	m.stats.resets.Add(1)
	wt := m.opts.WriteTimeout
	if err := c.write(w, encodeEvent(nil, id.String(), ResetEvent, why), wt); err != nil {
		return err
	}
	return c.flush(wt)
}

// register adds c to the manager, or says why it cannot.
func (m *Manager) register(c *client) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.closed:
		return "server shutting down"
	case m.opts.MaxClients > 0 && len(m.clients) >= m.opts.MaxClients:
		return "too many connections"
	case m.opts.MaxClientsPerAddr > 0 && m.perAddr[c.addr] >= m.opts.MaxClientsPerAddr:
		return "too many connections from this address"
	}
	m.clients[c] = struct{}{}
	m.perAddr[c.addr]++
	for _, t := range c.topics {
		set := m.topics[t]
		if set == nil {
			set = map[*client]struct{}{}
			m.topics[t] = set
		}
		set[c] = struct{}{}
	}
	return ""
}

// detach stops the fan-out to c; it reports whether c was attached.
func (m *Manager) detach(c *client) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.detachLocked(c)
}

// attachedLocked reports whether the fan-out reaches c (m.mu held).
func (m *Manager) attachedLocked(c *client) bool {
	_, ok := m.topics[c.topics[0]][c]
	return ok
}

func (m *Manager) detachLocked(c *client) bool {
	attached := false
	for _, t := range c.topics {
		if set := m.topics[t]; set != nil {
			if _, ok := set[c]; ok {
				attached = true
				delete(set, c)
				if len(set) == 0 {
					delete(m.topics, t)
				}
			}
		}
	}
	return attached
}

// unregister removes c for good.
func (m *Manager) unregister(c *client) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.detachLocked(c)
	if _, ok := m.clients[c]; !ok {
		return
	}
	delete(m.clients, c)
	if m.perAddr[c.addr]--; m.perAddr[c.addr] <= 0 {
		delete(m.perAddr, c.addr)
	}
	if m.closed && len(m.clients) == 0 {
		close(m.drained)
	}
}

func (m *Manager) clientAddr(r *http.Request) string {
	if m.opts.ClientAddr != nil {
		return m.opts.ClientAddr(r)
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// maxQueryParams bounds the parameters of a request's query; it is also the
// default limit of Go's query parser, which stops (and returns nothing)
// beyond it.
const maxQueryParams = 10_000

// requestQuery parses the request's query. Too many parameters, or a query
// in which nothing could be decoded, is an error, so that such a request is
// not told it has no topic.
func requestQuery(r *http.Request) (url.Values, error) {
	raw := r.URL.RawQuery
	if n := strings.Count(raw, "&") + 1; n > maxQueryParams {
		return nil, fmt.Errorf("sse: too many parameters (%d, at most %d)", n, maxQueryParams)
	}
	q, err := url.ParseQuery(raw)
	if err != nil && len(q) == 0 {
		return nil, fmt.Errorf("sse: bad query: %w", err)
	}
	return q, nil
}

// requestTopics returns the topics of query q, deduplicated, in order.
func requestTopics(q url.Values, max int) ([]string, error) {
	raw := q["topic"]
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: no topic (use ?topic=name)", ErrInvalidTopic)
	}
	seen := make(map[string]bool, len(raw))
	topics := make([]string, 0, len(raw))
	for _, t := range raw {
		if err := checkTopic(t); err != nil {
			return nil, err
		}
		if !seen[t] {
			seen[t] = true
			topics = append(topics, t)
		}
	}
	if len(topics) > max {
		return nil, fmt.Errorf("%w: %d topics, at most %d", ErrInvalidTopic, len(topics), max)
	}
	return topics, nil
}

// authorize runs Options.Authorize and keeps only requested topics.
func (m *Manager) authorize(r *http.Request, requested []string) ([]string, error) {
	allowed, err := m.opts.Authorize(r, append([]string(nil), requested...))
	if err != nil {
		return nil, err
	}
	ok := make(map[string]bool, len(allowed))
	for _, t := range allowed {
		ok[t] = true
	}
	out := requested[:0:0]
	for _, t := range requested {
		if ok[t] {
			out = append(out, t)
		}
	}
	if len(out) == 0 {
		return nil, &HTTPError{Status: http.StatusForbidden, Message: "sse: no allowed topic"}
	}
	return out, nil
}

// cors sets CORS headers for an allowed origin and answers preflight
// requests; it reports whether the request was answered.
func (m *Manager) cors(w http.ResponseWriter, r *http.Request) bool {
	if len(m.opts.AllowedOrigins) == 0 {
		return false
	}
	h := w.Header()
	h.Add("Vary", "Origin")
	origin := r.Header.Get("Origin")
	allowed := false
	if origin != "" {
		for _, o := range m.opts.AllowedOrigins {
			if o == "*" || o == origin {
				allowed = true
				break
			}
		}
	}
	if allowed {
		h.Set("Access-Control-Allow-Origin", origin)
		if m.opts.AllowCredentials {
			h.Set("Access-Control-Allow-Credentials", "true")
		}
	}
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		if allowed {
			h.Set("Access-Control-Allow-Methods", "GET")
			h.Set("Access-Control-Allow-Headers", "Last-Event-ID, Cache-Control")
			h.Set("Access-Control-Max-Age", "600")
		}
		w.WriteHeader(http.StatusNoContent)
		return true
	}
	return false
}

var _ http.Handler = (*Manager)(nil)
