package keyspace

import (
	"fmt"
	"time"
)

// DefaultFlags is what an empty Options.Flags stands for: keyspace and
// keyevent channels for all the events in Redis' A class.
const DefaultFlags = "KEA"

// Defaults for the zero values of Options.
const (
	DefaultQueueSize     = 10000
	DefaultCheckInterval = 5 * time.Second
	DefaultPingInterval  = 3 * time.Second
)

// ConfigMode says what the manager does with the server's
// notify-keyspace-events setting.
type ConfigMode int

const (
	// ConfigMerge (the default) reads the server's setting with CONFIG GET
	// and, when flags are missing, sets the union of what the server has and
	// what Options.Flags asks for. It never removes a flag. It is re-checked
	// every Options.CheckInterval and after every reconnect, so a restart or
	// failover that lost the setting is repaired. Where the server may not
	// be configured (managed Redis: CONFIG renamed, or an ACL user without
	// CONFIG SET), it needs nothing when the flags are already there. Start
	// fails only when flags are known to be missing and cannot be set, with
	// ErrConfigUnavailable naming them. Where even CONFIG GET is unavailable
	// (nothing can be read: renamed, denied, miniredis), the manager reports
	// ErrConfigUnavailable to Options.OnError once and goes on.
	ConfigMerge ConfigMode = iota
	// ConfigVerify only reads the setting: Start fails with ErrFlagsMissing
	// when flags are missing. Where CONFIG is unavailable, nothing can be
	// verified: the manager reports ErrConfigUnavailable to Options.OnError
	// (once, and again only after it could verify in between) and goes on.
	// For managed Redis, where flags are set in the console.
	ConfigVerify
	// ConfigWarn is ConfigVerify that reports missing flags to
	// Options.OnError instead of failing.
	ConfigWarn
	// ConfigSkip never sends CONFIG.
	ConfigSkip
)

// String returns the mode's name: "merge", "verify", "warn" or "skip".
func (m ConfigMode) String() string {
	switch m {
	case ConfigMerge:
		return "merge"
	case ConfigVerify:
		return "verify"
	case ConfigWarn:
		return "warn"
	case ConfigSkip:
		return "skip"
	}
	return fmt.Sprintf("ConfigMode(%d)", int(m))
}

// Overflow says what happens to an event that arrives while the handler
// queue is full.
type Overflow int

const (
	// OverflowBlock (the default) stops reading from Redis until the queue
	// has room. Nothing is dropped by the manager; Redis buffers the events
	// and disconnects the subscriber when its client-output-buffer-limit for
	// pubsub is exceeded, which the manager notices within about a second
	// (see Options.PingInterval) and reports as a gap (OnGap) once
	// subscribed again; the event a reader was waiting to queue and those
	// still in the socket are lost with the connection (the one counted in
	// Stats.Dropped).
	OverflowBlock Overflow = iota
	// OverflowDropNewest discards the arriving event (counted in
	// Stats.Dropped).
	OverflowDropNewest
	// OverflowDropOldest discards the oldest queued event to make room
	// (counted in Stats.Dropped).
	OverflowDropOldest
)

// String returns the policy's name: "block", "drop-newest" or "drop-oldest".
func (o Overflow) String() string {
	switch o {
	case OverflowBlock:
		return "block"
	case OverflowDropNewest:
		return "drop-newest"
	case OverflowDropOldest:
		return "drop-oldest"
	}
	return fmt.Sprintf("Overflow(%d)", int(o))
}

// Options configures a Manager. The zero value works: flags "KEA",
// database 0, config merged, a queue of DefaultQueueSize that blocks when
// full, one handler goroutine.
type Options struct {
	// Flags are the notify-keyspace-events flags the handlers need, e.g.
	// "KEA" or "Ex"; "" means DefaultFlags. K and/or E and at least one event
	// class are required. o and c need Redis 8.2+ (checked per server by
	// Start).
	Flags string
	// DB is the database to watch (>= 0).
	DB int
	// OnGap is called whenever a subscription was re-established (after a
	// dropped connection, a server restart or a failover), and when the
	// periodic check found the server's flags had been removed: events in
	// between are lost, because Redis pub/sub is at-most-once. Use it to
	// resynchronise (rescan the keys you care about). It runs on the
	// subscriber's goroutine: return quickly.
	OnGap func()
	// OnGapDetail, when set, is called on every OnGap occasion as well
	// (after OnGap), with the server it concerns, the reason and the times:
	// in a cluster, only that primary's keys need a rescan. Same goroutine
	// and rules as OnGap.
	OnGapDetail func(Gap)

	// Config is what the manager does with the server setting (default
	// ConfigMerge).
	Config ConfigMode
	// RestoreOnClose makes Close put back the setting each server had before
	// the first manager changed it, keeping the flags that other managers
	// still running (in this process or any other) need: during a rolling
	// deploy the instance that leaves first removes nothing the others use,
	// and the last one restores the original. Each manager's config
	// connection carries a lease in its client name (CLIENT SETNAME) with
	// the flags it needs and the original value; the lease ends with the
	// connection, so a process that dies without Close holds nothing back.
	// Where CLIENT LIST is denied, or someone else changed the setting
	// since, the setting is left alone (reported to OnError).
	RestoreOnClose bool

	// QueueSize is the capacity of each handler goroutine's queue (default
	// DefaultQueueSize). The event being handled does not count.
	//
	// While a queue is empty and its handler goroutine idle, the subscriber
	// goroutine runs the handlers of an event itself (handing each event to
	// another goroutine would cost more than most handlers do). A handler
	// call that is still running after about 10–20 ms hands the reading to
	// a new goroutine (counted in Stats.Handoffs); the events read
	// meanwhile wait in the queue, subject to Overflow, and the handler
	// goroutine handles them in order once that call returned. A reader
	// that short handlers keep busy (found in handlers at three looks in a
	// row, 10 ms apart) queues every event until the queues are empty and
	// idle again, so that the Workers run them in parallel and the Overflow
	// policy applies. Handlers of one queue never run at the same time,
	// wherever they run. The handler
	// goroutine takes the waiting events in batches and, while events keep
	// coming, looks for more every 100 µs instead of being woken for each.
	QueueSize int
	// Overflow is the policy for a full queue (default OverflowBlock).
	Overflow Overflow
	// Workers is the number of handler goroutines (default 1). Events are
	// spread by key, so the events of one key reach handlers in order
	// whatever the number; events of different keys are handled in
	// parallel once handlers keep the reader busy (see QueueSize).
	Workers int
	// Inline runs handlers on the subscriber goroutine (one per server)
	// always, without queue or hand-off. It saves little over the default
	// (which runs quick handlers there too, see QueueSize): a few tens of
	// nanoseconds per event. A handler that takes long stops the reading;
	// Redis then buffers the events up to its client-output-buffer-limit
	// for pubsub and disconnects the subscriber beyond it (reported as a
	// gap). In a cluster, handlers for different primaries run at the same
	// time. QueueSize, Workers and Overflow must be left zero.
	Inline bool

	// CheckInterval is how often the manager re-reads the topology (cluster
	// primaries, ring shards) and re-checks the server setting (default
	// DefaultCheckInterval).
	CheckInterval time.Duration
	// PingInterval is how long a subscriber waits for traffic before it
	// pings the server; a ping unanswered for another interval counts as a
	// broken connection (default DefaultPingInterval). While events flow,
	// or a handler holds up the reader, the connection is probed with a
	// PING write every 250 ms (or PingInterval, if shorter) instead: a
	// write fails soon after the server closed the connection, even while
	// events it sent before are still unread.
	PingInterval time.Duration

	// OnError receives problems the manager works around without failing:
	// reconnect failures, handler panics (*PanicError), a verify-only
	// mismatch (ConfigWarn), ErrConfigUnavailable, a restore that was
	// skipped. A problem with a server's setting that persists is reported
	// once per server, and again only after it changed. It may be called
	// from several goroutines at once.
	OnError func(error)
}

func (o Options) withDefaults() (Options, flagSet, error) {
	fs, err := parseFlags(o.Flags)
	if err != nil {
		return o, 0, err
	}
	if o.Flags == "" {
		o.Flags = DefaultFlags
	}
	switch {
	case o.DB < 0:
		return o, 0, fmt.Errorf("%w: DB %d is negative", ErrInvalidOptions, o.DB)
	case o.QueueSize < 0:
		return o, 0, fmt.Errorf("%w: QueueSize %d is negative", ErrInvalidOptions, o.QueueSize)
	case o.Workers < 0:
		return o, 0, fmt.Errorf("%w: Workers %d is negative", ErrInvalidOptions, o.Workers)
	case o.CheckInterval < 0:
		return o, 0, fmt.Errorf("%w: CheckInterval %v is negative", ErrInvalidOptions, o.CheckInterval)
	case o.PingInterval < 0:
		return o, 0, fmt.Errorf("%w: PingInterval %v is negative", ErrInvalidOptions, o.PingInterval)
	case o.Config < ConfigMerge || o.Config > ConfigSkip:
		return o, 0, fmt.Errorf("%w: unknown Config mode %d", ErrInvalidOptions, int(o.Config))
	case o.Overflow < OverflowBlock || o.Overflow > OverflowDropOldest:
		return o, 0, fmt.Errorf("%w: unknown Overflow policy %d", ErrInvalidOptions, int(o.Overflow))
	}
	if o.Inline && (o.QueueSize != 0 || o.Workers != 0 || o.Overflow != OverflowBlock) {
		return o, 0, fmt.Errorf("%w: Inline has no queue: leave QueueSize, Workers and Overflow zero", ErrInvalidOptions)
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.Workers == 0 {
		o.Workers = 1
	}
	if o.CheckInterval == 0 {
		o.CheckInterval = DefaultCheckInterval
	}
	if o.PingInterval == 0 {
		o.PingInterval = DefaultPingInterval
	}
	return o, fs, nil
}
