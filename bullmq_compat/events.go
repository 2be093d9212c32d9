package bullmq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/dedicated"
)

// Event is one entry of a queue's events stream (<prefix>:<queue>:events),
// written by Go or Node queues and workers.
type Event struct {
	// StreamID is the stream entry id, usable as QueueEventsOptions.LastEventID.
	StreamID string
	// Name is the event: "added", "waiting", "active", "completed",
	// "failed", "delayed", "progress", "stalled", "retries-exhausted",
	// "drained", "paused", "resumed", "duplicated", "removed", ...
	Name string
	// JobID is the job the event is about ("" for queue-wide events).
	JobID string
	// Prev is the job's previous state, when the event says.
	Prev string
	// ReturnValue is the result of a "completed" job (JSON).
	ReturnValue json.RawMessage
	// FailedReason is the reason of a "failed" event.
	FailedReason string
	// Data is the progress of a "progress" event (JSON).
	Data json.RawMessage
	// Delay is the due time of a "delayed" event.
	Delay time.Time
	// Fields holds every field of the entry except "event".
	Fields map[string]string
}

// QueueEventsOptions configure a QueueEvents. The zero value works.
type QueueEventsOptions struct {
	// Prefix of every key (default DefaultPrefix, "bull").
	Prefix string
	// LastEventID is the stream id after which to start reading; "" means
	// from the events added after NewQueueEvents returns ("$"), "0" from
	// the start of the stream.
	LastEventID string
	// BlockTimeout is the longest single XREAD BLOCK (default
	// DefaultBlockTimeout, 10s, as Node).
	BlockTimeout time.Duration
}

// QueueEvents reads a queue's events stream, like Node's QueueEvents, on a
// dedicated connection held with a long-lived mark and the owner
// "bullmq:events:<queue>". Next must not be called concurrently; Close may
// be called from any goroutine.
type QueueEvents struct {
	k        *keys
	opts     QueueEventsOptions
	bc       *blockConn
	closeCtx context.Context
	cancel   context.CancelFunc
	mu       sync.Mutex // held by Next
	last     string
	pending  []Event
}

// NewQueueEvents opens the dedicated connection and, when
// opts.LastEventID is "", fixes the starting point at the stream's current
// end, so every event added after it returns is delivered.
func NewQueueEvents(ctx context.Context, rdb redis.UniversalClient, queue string, opts QueueEventsOptions) (*QueueEvents, error) {
	if rdb == nil {
		return nil, invalidf("nil Redis client")
	}
	if opts.BlockTimeout < 0 {
		return nil, invalidf("negative BlockTimeout %v", opts.BlockTimeout)
	}
	if opts.BlockTimeout == 0 {
		opts.BlockTimeout = DefaultBlockTimeout
	}
	k, err := newKeys(opts.Prefix, queue)
	if err != nil {
		return nil, err
	}
	owner := "bullmq:events:" + queue
	bc, err := openBlockConn(ctx, rdb, k.key(kEvents), k.clientName("")+":qe", owner)
	if err != nil {
		return nil, fmt.Errorf("bullmq: events of %s: %w", queue, err)
	}
	e := &QueueEvents{k: k, opts: opts, bc: bc, last: opts.LastEventID}
	e.closeCtx, e.cancel = context.WithCancel(context.Background())
	if e.last == "" || e.last == "$" {
		e.last = "0-0"
		err := bc.do(ctx, func(c context.Context, r blockCmd) error {
			msgs, err := r.XRevRangeN(c, k.key(kEvents), "+", "-", 1).Result()
			if err == nil && len(msgs) == 1 {
				e.last = msgs[0].ID
			}
			return err
		})
		if err != nil {
			_ = bc.Close()
			return nil, fmt.Errorf("bullmq: events of %s: %w", queue, err)
		}
	}
	return e, nil
}

// Next returns the next event, blocking until one arrives or ctx ends.
func (e *QueueEvents) Next(ctx context.Context) (Event, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closeCtx.Err() != nil {
		return Event{}, ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(e.closeCtx, cancel)
	defer stop()
	for {
		if len(e.pending) > 0 {
			ev := e.pending[0]
			e.pending = e.pending[1:]
			return ev, nil
		}
		var streams []redis.XStream
		err := e.bc.do(ctx, func(c context.Context, r blockCmd) error {
			var err error
			streams, err = r.XRead(c, &redis.XReadArgs{
				Streams: []string{e.k.key(kEvents), e.last}, Count: 100, Block: r.maxBlock(e.opts.BlockTimeout),
			}).Result()
			return err
		})
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if e.closeCtx.Err() != nil {
				return Event{}, ErrClosed
			}
			if ctx.Err() != nil {
				return Event{}, err
			}
			if !dedicated.IsNetworkError(err) {
				return Event{}, fmt.Errorf("bullmq: events of %s: %w", e.k.name, err)
			}
			// The connection failed (a restarted server?) and was closed:
			// open a new one once; the stream id says where to go on.
			if rerr := e.bc.open(ctx); rerr != nil {
				return Event{}, fmt.Errorf("bullmq: events of %s: %w (reconnect: %v)", e.k.name, err, rerr)
			}
			continue
		}
		for _, s := range streams {
			for _, m := range s.Messages {
				e.pending = append(e.pending, parseEvent(m))
				e.last = m.ID
			}
		}
	}
}

func parseEvent(m redis.XMessage) Event {
	ev := Event{StreamID: m.ID, Fields: make(map[string]string, len(m.Values))}
	for k, v := range m.Values {
		s, _ := v.(string)
		if k == "event" {
			ev.Name = s
			continue
		}
		ev.Fields[k] = s
	}
	ev.JobID = ev.Fields["jobId"]
	ev.Prev = ev.Fields["prev"]
	ev.FailedReason = ev.Fields["failedReason"]
	if v, ok := ev.Fields["returnvalue"]; ok {
		ev.ReturnValue = json.RawMessage(v)
	}
	if v, ok := ev.Fields["data"]; ok {
		ev.Data = json.RawMessage(v)
	}
	if v, ok := ev.Fields["delay"]; ok {
		if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
			ev.Delay = time.UnixMilli(ms)
		}
	}
	return ev
}

// Close releases the dedicated connection; a Next blocked on it returns
// promptly. Idempotent.
func (e *QueueEvents) Close() error {
	e.cancel()
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.bc.Close()
}
