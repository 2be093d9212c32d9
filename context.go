package redisleak

import (
	"context"
	"time"
)

// markKey is the context key under which a *mark is stored.
type markKey struct{}

// mark is what a caller's context says about the hold it is about to start.
// It is immutable once stored in a context: every With… function copies it.
type mark struct {
	longLived bool
	owner     string
	maxHold   time.Duration // 0: the tracker's threshold
	// pipeline and tx are set by the tracker's pipeline hook.
	pipeline, tx bool
}

// blockForever is the timeout of a blocking command that waits forever.
const blockForever time.Duration = -1

func markFrom(ctx context.Context) *mark {
	if ctx == nil {
		return nil
	}
	m, _ := ctx.Value(markKey{}).(*mark)
	return m
}

func withMark(ctx context.Context, f func(*mark)) context.Context {
	if ctx == nil {
		ctx = context.Background()
	}
	var m mark
	if old := markFrom(ctx); old != nil {
		m = *old
	}
	f(&m)
	return context.WithValue(ctx, markKey{}, &m)
}

// WithLongLived returns a copy of ctx that marks the connection hold started
// with it as long-lived: the tracker counts such holds in Stats.LongLived and
// never reports them as leaks, however long they last.
//
// Use it on the context of the call that acquires the connection: the first
// command on a Client.Conn, Subscribe/PSubscribe, or a blocking call such as
// BLPOP. Contexts derived from the result keep the mark; strip it with
// WithoutLongLived before handing the context to code whose own holds must
// still be checked (job handlers, request handlers).
func WithLongLived(ctx context.Context) context.Context {
	return withMark(ctx, func(m *mark) { m.longLived = true })
}

// WithoutLongLived returns a copy of ctx in which a long-lived mark set by
// WithLongLived no longer applies. The owner and per-call threshold are kept.
func WithoutLongLived(ctx context.Context) context.Context {
	if m := markFrom(ctx); m == nil || !m.longLived {
		if ctx == nil {
			return context.Background()
		}
		return ctx
	}
	return withMark(ctx, func(m *mark) { m.longLived = false })
}

// WithOwner returns a copy of ctx that names the holder of connections
// acquired with it, e.g. "bullmq:worker:emails". The owner appears in leak
// reports, in Stats and in the text of enriched pool-timeout errors.
func WithOwner(ctx context.Context, owner string) context.Context {
	return withMark(ctx, func(m *mark) { m.owner = owner })
}

// WithMaxHold returns a copy of ctx whose holds are leaks only once they
// exceed d, instead of the tracker's Options.MaxHold. Use it for holds that
// are long but bounded (a batch import on a Conn, a slow Lua script).
// d <= 0 removes a threshold set earlier.
func WithMaxHold(ctx context.Context, d time.Duration) context.Context {
	if d < 0 {
		d = 0
	}
	return withMark(ctx, func(m *mark) { m.maxHold = d })
}
