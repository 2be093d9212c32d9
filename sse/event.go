package sse

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Event is one Server-Sent Event.
//
// ID must be empty when the event is handed to Manager.Publish: Publish
// assigns the id (the entry id of the namespace's history stream) and
// returns it. Event is the SSE event type ("" means the browser's default,
// "message"); it must not contain CR, LF or NUL, and must not be "reset" or
// "heartbeat", the types of the manager's own events, nor "error" or "open", which a
// browser's EventSource would hand to onerror and onopen as if the
// connection had failed or opened. Data may span several lines
// (LF, CR LF or CR all end a line, as in the SSE grammar); it must not
// contain NUL.
type Event struct {
	ID    string
	Event string
	Data  string
}

// streamID is a Redis stream entry id, "<ms>-<seq>".
type streamID struct {
	ms, seq uint64
}

// parseID parses a stream entry id of the form "<ms>-<seq>" (both decimal).
func parseID(s string) (streamID, bool) {
	dash := strings.IndexByte(s, '-')
	if dash <= 0 || dash == len(s)-1 {
		return streamID{}, false
	}
	ms, err1 := strconv.ParseUint(s[:dash], 10, 64)
	seq, err2 := strconv.ParseUint(s[dash+1:], 10, 64)
	if err1 != nil || err2 != nil {
		return streamID{}, false
	}
	// Reject forms ParseUint accepts that Redis never produces ("+1", "01").
	if s[0] == '+' || s[dash+1] == '+' || (len(s[:dash]) > 1 && s[0] == '0') ||
		(len(s[dash+1:]) > 1 && s[dash+1] == '0') {
		return streamID{}, false
	}
	return streamID{ms: ms, seq: seq}, true
}

func (id streamID) String() string {
	return strconv.FormatUint(id.ms, 10) + "-" + strconv.FormatUint(id.seq, 10)
}

func (id streamID) isZero() bool { return id.ms == 0 && id.seq == 0 }

// less reports whether id sorts before o.
func (id streamID) less(o streamID) bool {
	if id.ms != o.ms {
		return id.ms < o.ms
	}
	return id.seq < o.seq
}

// next returns the smallest id greater than id (for exclusive ranges that
// also work on servers without the "(" syntax).
func (id streamID) next() streamID {
	if id.seq == ^uint64(0) {
		return streamID{ms: id.ms + 1}
	}
	return streamID{ms: id.ms, seq: id.seq + 1}
}

// validName reports why a topic, event type or namespace is unusable, or "".
func badChars(s string) string {
	if strings.ContainsAny(s, "\r\n\x00") {
		return "contains CR, LF or NUL"
	}
	return ""
}

// checkTopic returns an error wrapping ErrInvalidTopic when topic cannot be
// used.
func checkTopic(topic string) error {
	if topic == "" {
		return fmt.Errorf("%w: empty", ErrInvalidTopic)
	}
	if len(topic) > maxTopicLen {
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidTopic, maxTopicLen)
	}
	if why := badChars(topic); why != "" {
		return fmt.Errorf("%w: %q %s", ErrInvalidTopic, topic, why)
	}
	return nil
}

// ResetEvent is the SSE event type of the event a stream gets instead of a
// replay when its cursor cannot be resumed (malformed, unknown, or older than
// the history). Its data says why; its id is the newest id of the history.
// When Redis lost the history, the data starts with "history lost", the id
// is the origin of the new history, and every event of the new history
// follows. A client should reload its state when it sees one.
const ResetEvent = "reset"

// HeartbeatEvent is the SSE event type of a heartbeat that moves the
// client's cursor: "id: <id>", "event: heartbeat" and an empty "data:" line.
// It is an event (not only an id line) because Node's eventsource package,
// unlike browsers, ignores the id of a block without data; being typed, it
// never reaches an EventSource's onmessage, only listeners added with
// addEventListener("heartbeat", ...). Heartbeats that do not move the cursor
// are comments.
const HeartbeatEvent = "heartbeat"

// maxTopicLen bounds a topic name.
const maxTopicLen = 256

// checkEvent returns an error wrapping ErrInvalidEvent when e cannot be
// published.
func checkEvent(e Event) error {
	if e.ID != "" {
		return fmt.Errorf("%w: ID must be empty (Publish assigns it)", ErrInvalidEvent)
	}
	if why := badChars(e.Event); why != "" {
		return fmt.Errorf("%w: event type %s", ErrInvalidEvent, why)
	}
	switch e.Event {
	case ResetEvent, HeartbeatEvent:
		return fmt.Errorf("%w: event type %q is reserved", ErrInvalidEvent, e.Event)
	case "error", "open":
		return fmt.Errorf("%w: event type %q would fire the EventSource's on%s handler, which apps read as connection state; use another name", ErrInvalidEvent, e.Event, e.Event)
	}
	if strings.IndexByte(e.Data, 0) >= 0 {
		return fmt.Errorf("%w: data contains NUL", ErrInvalidEvent)
	}
	return nil
}

// frame is one encoded SSE message, shared read-only by every client that
// receives it.
type frame struct {
	id    streamID
	topic string
	buf   []byte
}

// encodeEvent renders an event as an SSE message: the id line, the event
// line when typed, one data line per line of data (at least one, so that an
// empty payload still dispatches), and the blank line that ends it.
func encodeEvent(dst []byte, id, typ, data string) []byte {
	dst = append(dst, "id: "...)
	dst = append(dst, id...)
	dst = append(dst, '\n')
	if typ != "" {
		dst = append(dst, "event: "...)
		dst = append(dst, typ...)
		dst = append(dst, '\n')
	}
	for {
		i := strings.IndexAny(data, "\r\n")
		if i < 0 {
			break
		}
		dst = append(dst, "data: "...)
		dst = append(dst, data[:i]...)
		dst = append(dst, '\n')
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	dst = append(dst, "data: "...)
	dst = append(dst, data...)
	dst = append(dst, '\n', '\n')
	return dst
}

// encodeComment renders text as SSE comment lines (never dispatched).
func encodeComment(dst []byte, text string) []byte {
	for _, line := range strings.FieldsFunc(text, func(r rune) bool { return r == '\r' || r == '\n' }) {
		dst = append(dst, ": "...)
		dst = append(dst, strings.ReplaceAll(line, "\x00", "")...)
		dst = append(dst, '\n')
	}
	return append(dst, '\n')
}

// Errors returned by the package. Match them with errors.Is.
var (
	// ErrClosed is returned by Publish after Close.
	ErrClosed = errors.New("sse: manager closed")
	// ErrInvalidEvent is wrapped by Publish errors about the event itself.
	ErrInvalidEvent = errors.New("sse: invalid event")
	// ErrInvalidTopic is wrapped by errors about a topic name.
	ErrInvalidTopic = errors.New("sse: invalid topic")
	// ErrInvalidOptions is wrapped by NewManager errors about Options.
	ErrInvalidOptions = errors.New("sse: invalid options")
)
