package sse

import (
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Options configures a Manager. The zero value works: every zero field takes
// the default named in its comment. Negative values are an error from
// NewManager.
type Options struct {
	// Namespace names the history stream and the pub/sub channel shared by
	// every manager that should see the same events: "{<ns>}:history" and
	// "{<ns>}:live" (one hash tag, so both live in one cluster slot).
	// Default DefaultNamespace ("sse"). Must not contain braces, CR, LF or NUL.
	Namespace string

	// Heartbeat is the interval of the comment written to every stream so
	// that proxies do not cut idle connections. A heartbeat also advances the
	// client's cursor past events of other topics (then it is an event of
	// type HeartbeatEvent, invisible to onmessage), so a quiet topic's cursor
	// never falls out of the history. A proxy's read timeout must be longer.
	// Default DefaultHeartbeat (15s).
	Heartbeat time.Duration

	// Retry is the reconnection delay suggested to browsers with a "retry:"
	// line at the start of every stream. Default DefaultRetry (3s).
	Retry time.Duration

	// HistorySize is the approximate number of events kept in the history
	// stream (XADD MAXLEN ~: Redis trims whole nodes, so a few more may be
	// kept). Replay reaches back at most this far. Default DefaultHistorySize
	// (10,000).
	HistorySize int64

	// QueueSize is the number of events buffered for one client between the
	// fan-out and the client's connection. Fan-out never waits for a client:
	// when its queue is full, OnFull applies. Default DefaultQueueSize
	// (1,024).
	QueueSize int

	// OnFull says what happens to a client whose queue is full. The default,
	// Disconnect, ends its stream with a closing comment; a browser then
	// reconnects with its cursor and replays what it missed.
	OnFull OverflowPolicy

	// WriteTimeout bounds every write to one client (events already queued
	// are written and flushed together, within one deadline); a client that
	// does not read within it is disconnected. It overrides
	// http.Server.WriteTimeout for the stream, through
	// http.ResponseController: a ResponseWriter wrapper must implement
	// Unwrap for deadlines (and flushing) to work. Default
	// DefaultWriteTimeout (10s).
	WriteTimeout time.Duration

	// Sharded uses sharded pub/sub (SSUBSCRIBE/SPUBLISH, Redis 7) instead of
	// PUBLISH: on a Redis Cluster the live traffic then stays on the shard
	// that owns the namespace's slot instead of being broadcast to every node.
	Sharded bool

	// MaxTopics bounds the topics of one connection. Default
	// DefaultMaxTopics (32).
	MaxTopics int

	// MaxClients bounds the concurrent streams of this manager; 0 means no
	// limit. A connection over a limit is answered 200 with a "retry:" hint
	// and a closing comment, so that a browser tries again later instead of
	// giving up (any status but 200 stops an EventSource for good).
	MaxClients int

	// MaxClientsPerAddr bounds the concurrent streams per client address
	// (ClientAddr); 0 means no limit. Over the limit: as MaxClients.
	MaxClientsPerAddr int

	// ClientAddr returns the address a request counts against
	// MaxClientsPerAddr. Default: the host part of Request.RemoteAddr. Set it
	// behind a trusted proxy (e.g. to read X-Forwarded-For).
	ClientAddr func(r *http.Request) string

	// Authorize, when set, runs before a stream starts with the requested
	// topics (deduplicated, in request order). It returns the topics the
	// request may receive (the same, or fewer), or an error: an
	// *HTTPError answers with its status (401 or 403 to refuse, 204 to tell
	// a browser to stop reconnecting); any other error answers 403. An empty
	// topic list answers 403. The request's context carries no long-lived
	// mark. Authorize may be called concurrently.
	Authorize func(r *http.Request, topics []string) ([]string, error)

	// AllowedOrigins enables CORS for the listed origins ("*" allows any).
	// The matching origin is echoed in Access-Control-Allow-Origin, and
	// OPTIONS preflight requests are answered. Empty: no CORS headers.
	AllowedOrigins []string

	// AllowCredentials adds Access-Control-Allow-Credentials: true for an
	// allowed origin (EventSource with withCredentials).
	AllowCredentials bool

	// OnError, when set, receives errors the manager cannot return to a
	// caller: Redis errors of the subscriber and of gap fills, and failures
	// of individual streams. It is called from the manager's goroutines and
	// must not block for long: the fan-out may be waiting.
	OnError func(err error)
}

// OverflowPolicy is what a Manager does with a client whose queue is full.
type OverflowPolicy int

const (
	// Disconnect ends the client's stream with the comment
	// ": closing: client too slow" (best effort within WriteTimeout). The
	// browser reconnects with its Last-Event-ID and replays from history.
	Disconnect OverflowPolicy = iota
	// DropEvents skips events for the client while its queue is full and
	// counts them in Stats.Drops. The stream goes on with a hole.
	DropEvents
)

// HTTPError is an error Options.Authorize returns to answer a request with a
// given status instead of a stream.
type HTTPError struct {
	// Status is the HTTP status code, e.g. 401, 403, or 204 (a browser's
	// EventSource stops reconnecting on 204).
	Status int
	// Message is written as the response body (plain text); may be empty.
	Message string
}

// Error implements error.
func (e *HTTPError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("sse: refused with status %d", e.Status)
	}
	return fmt.Sprintf("sse: refused with status %d: %s", e.Status, e.Message)
}

// Defaults for the zero values of Options.
const (
	DefaultNamespace    = "sse"
	DefaultHeartbeat    = 15 * time.Second
	DefaultRetry        = 3 * time.Second
	DefaultHistorySize  = 10_000
	DefaultQueueSize    = 1024
	DefaultWriteTimeout = 10 * time.Second
	DefaultMaxTopics    = 32
)

// replayBatch is the COUNT of one XRANGE during replay and gap fill.
const replayBatch = 512

// withDefaults validates o and returns a copy with defaults filled in.
func (o Options) withDefaults() (Options, error) {
	bad := func(format string, a ...any) (Options, error) {
		return Options{}, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOptions}, a...)...)
	}
	switch {
	case o.Heartbeat < 0:
		return bad("Heartbeat %v < 0", o.Heartbeat)
	case o.Retry < 0:
		return bad("Retry %v < 0", o.Retry)
	case o.HistorySize < 0:
		return bad("HistorySize %d < 0", o.HistorySize)
	case o.QueueSize < 0:
		return bad("QueueSize %d < 0", o.QueueSize)
	case o.WriteTimeout < 0:
		return bad("WriteTimeout %v < 0", o.WriteTimeout)
	case o.MaxTopics < 0:
		return bad("MaxTopics %d < 0", o.MaxTopics)
	case o.MaxClients < 0:
		return bad("MaxClients %d < 0", o.MaxClients)
	case o.MaxClientsPerAddr < 0:
		return bad("MaxClientsPerAddr %d < 0", o.MaxClientsPerAddr)
	case o.OnFull != Disconnect && o.OnFull != DropEvents:
		return bad("unknown OnFull policy %d", o.OnFull)
	case strings.ContainsAny(o.Namespace, "{}\r\n\x00"):
		return bad("Namespace %q contains braces, CR, LF or NUL", o.Namespace)
	}
	for _, origin := range o.AllowedOrigins {
		if origin == "" || badChars(origin) != "" {
			return bad("AllowedOrigins entry %q", origin)
		}
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.Retry == 0 {
		o.Retry = DefaultRetry
	}
	if o.HistorySize == 0 {
		o.HistorySize = DefaultHistorySize
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.MaxTopics == 0 {
		o.MaxTopics = DefaultMaxTopics
	}
	o.AllowedOrigins = append([]string(nil), o.AllowedOrigins...)
	return o, nil
}
