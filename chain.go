package redisleak

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// chained is what the tracker installs as go-redis's recorder when a
// recorder is chained through Options.ChainRecorder: every call goes to the
// dispatcher, then to the chained recorder (with the pool and
// connection-count calls, if it takes them). Keeping the chain out of the
// dispatcher keeps the dispatcher's callbacks short for everyone else: a
// callback that hands its arguments on to another call pays for it on
// every call.
type chained struct {
	d   *dispatcher
	box *chainBox
}

var (
	_ redis.OTelRecorder          = (*chained)(nil)
	_ redis.OTelConnectionCounter = (*chained)(nil)
	_ redis.OTelPoolRegistrar     = (*chained)(nil)
)

// RecordConnectionCount goes to the dispatcher, then to the chained recorder.
func (c *chained) RecordConnectionCount(ctx context.Context, delta int, cn redis.ConnInfo, state string, isPubSub bool) {
	c.d.RecordConnectionCount(ctx, delta, cn, state, isPubSub)
	if c.box.counter != nil {
		c.box.counter.RecordConnectionCount(ctx, delta, cn, state, isPubSub)
	}
}

// RecordPendingRequests goes to the dispatcher, then to the chained recorder.
func (c *chained) RecordPendingRequests(ctx context.Context, delta int, cn redis.ConnInfo, poolName string) {
	c.d.RecordPendingRequests(ctx, delta, cn, poolName)
	if c.box.counter != nil {
		c.box.counter.RecordPendingRequests(ctx, delta, cn, poolName)
	}
}

// RecordConnectionWaitTime goes to the dispatcher, then to the chained recorder.
func (c *chained) RecordConnectionWaitTime(ctx context.Context, dur time.Duration, cn redis.ConnInfo) {
	c.d.RecordConnectionWaitTime(ctx, dur, cn)
	c.box.rec.RecordConnectionWaitTime(ctx, dur, cn)
}

// RecordOperationDuration goes to the dispatcher, then to the chained recorder.
func (c *chained) RecordOperationDuration(ctx context.Context, dur time.Duration, cmd redis.Cmder, attempts int, err error, cn redis.ConnInfo, db int) {
	c.d.RecordOperationDuration(ctx, dur, cmd, attempts, err, cn, db)
	c.box.rec.RecordOperationDuration(ctx, dur, cmd, attempts, err, cn, db)
}

// RecordPipelineOperationDuration goes to the dispatcher, then to the chained recorder.
func (c *chained) RecordPipelineOperationDuration(ctx context.Context, dur time.Duration, op string, n, attempts int, err error, cn redis.ConnInfo, db int) {
	c.d.RecordPipelineOperationDuration(ctx, dur, op, n, attempts, err, cn, db)
	c.box.rec.RecordPipelineOperationDuration(ctx, dur, op, n, attempts, err, cn, db)
}

// RecordConnectionClosed goes to the dispatcher, then to the chained recorder.
func (c *chained) RecordConnectionClosed(ctx context.Context, cn redis.ConnInfo, reason string, err error) {
	c.d.RecordConnectionClosed(ctx, cn, reason, err)
	c.box.rec.RecordConnectionClosed(ctx, cn, reason, err)
}

// RegisterPool goes to the chained recorder if it registers pools (not for
// the tracker's own throwaway client, see installed).
func (c *chained) RegisterPool(name string, p redis.Pooler) {
	if c.box.registrar != nil && !strings.HasPrefix(name, probeAddr+"_") {
		c.box.registrar.RegisterPool(name, p)
	}
}

// UnregisterPool goes to the chained recorder if it registers pools.
func (c *chained) UnregisterPool(p redis.Pooler) {
	if c.box.registrar != nil {
		c.box.registrar.UnregisterPool(p)
	}
}

// RegisterPubSubPool goes to the chained recorder if it registers pools.
func (c *chained) RegisterPubSubPool(name string, p redis.PubSubPooler) {
	if c.box.registrar != nil && !strings.HasPrefix(name, probeAddr+"_") {
		c.box.registrar.RegisterPubSubPool(name, p)
	}
}

// UnregisterPubSubPool goes to the chained recorder if it registers pools.
func (c *chained) UnregisterPubSubPool(p redis.PubSubPooler) {
	if c.box.registrar != nil {
		c.box.registrar.UnregisterPubSubPool(p)
	}
}

// The other events concern only the chained recorder.

// RecordConnectionCreateTime goes to the chained recorder.
func (c *chained) RecordConnectionCreateTime(ctx context.Context, dur time.Duration, cn redis.ConnInfo) {
	c.box.rec.RecordConnectionCreateTime(ctx, dur, cn)
}

// RecordConnectionRelaxedTimeout goes to the chained recorder.
func (c *chained) RecordConnectionRelaxedTimeout(ctx context.Context, delta int, cn redis.ConnInfo, pool, typ string) {
	c.box.rec.RecordConnectionRelaxedTimeout(ctx, delta, cn, pool, typ)
}

// RecordConnectionHandoff goes to the chained recorder.
func (c *chained) RecordConnectionHandoff(ctx context.Context, cn redis.ConnInfo, pool string) {
	c.box.rec.RecordConnectionHandoff(ctx, cn, pool)
}

// RecordError goes to the chained recorder.
func (c *chained) RecordError(ctx context.Context, typ string, cn redis.ConnInfo, status string, internal bool, retries int) {
	c.box.rec.RecordError(ctx, typ, cn, status, internal, retries)
}

// RecordMaintenanceNotification goes to the chained recorder.
func (c *chained) RecordMaintenanceNotification(ctx context.Context, cn redis.ConnInfo, typ string) {
	c.box.rec.RecordMaintenanceNotification(ctx, cn, typ)
}

// RecordPubSubMessage goes to the chained recorder.
func (c *chained) RecordPubSubMessage(ctx context.Context, cn redis.ConnInfo, dir, ch string, sharded bool) {
	c.box.rec.RecordPubSubMessage(ctx, cn, dir, ch, sharded)
}

// RecordStreamLag goes to the chained recorder.
func (c *chained) RecordStreamLag(ctx context.Context, lag time.Duration, cn redis.ConnInfo, stream, group, consumer string) {
	c.box.rec.RecordStreamLag(ctx, lag, cn, stream, group, consumer)
}
