package keyspace

import (
	"errors"
	"fmt"
)

// Errors returned (wrapped, test with errors.Is) by this package.
var (
	// ErrBadFlags: Options.Flags has an unknown letter, or selects nothing.
	ErrBadFlags = errors.New("keyspace: bad notify-keyspace-events flags")
	// ErrUnsupportedFlag: a flag the server's version does not know.
	ErrUnsupportedFlag = errors.New("keyspace: flag not supported by the server")
	// ErrInvalidOptions: an invalid Options field or handler argument.
	ErrInvalidOptions = errors.New("keyspace: invalid options")
	// ErrConfigUnavailable: CONFIG GET/SET failed with a server error
	// (CONFIG renamed or blocked, as on managed Redis; miniredis has none).
	// From Start: flags are missing and could not be set (the message names
	// them); reported to Options.OnError: the setting cannot be read.
	ErrConfigUnavailable = errors.New("keyspace: CONFIG unavailable")
	// ErrFlagsMissing: the server lacks flags the handlers need
	// (ConfigVerify, ConfigWarn).
	ErrFlagsMissing = errors.New("keyspace: server lacks notify-keyspace-events flags")
	// ErrUnsupportedClient: NewManager was given a client type it cannot
	// subscribe with.
	ErrUnsupportedClient = errors.New("keyspace: unsupported client type")
	// ErrStarted: Start was called twice.
	ErrStarted = errors.New("keyspace: manager already started")
	// ErrClosed: the manager is closed.
	ErrClosed = errors.New("keyspace: manager closed")
)

// PanicError is reported to Options.OnError when a handler panics. The
// manager recovers, counts it in Stats.Panics and goes on.
type PanicError struct {
	Event Event
	Value any
	Stack []byte
}

// Error describes the panic and the event that caused it.
func (e *PanicError) Error() string {
	return fmt.Sprintf("keyspace: handler panicked on %s %q (db %d): %v", e.Event.Event, e.Event.Key, e.Event.DB, e.Value)
}

// NodeError is a problem with one server, reported to Options.OnError or
// returned by Start.
type NodeError struct {
	Node string
	Op   string // "config", "subscribe", "receive", "restore", "topology"
	Err  error
}

// Error names the node and the operation.
func (e *NodeError) Error() string {
	return fmt.Sprintf("keyspace: %s on %s: %v", e.Op, e.Node, e.Err)
}

// Unwrap returns the underlying error.
func (e *NodeError) Unwrap() error { return e.Err }
