package bullmq

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/dedicated"
)

// blockConn is a connection dedicated to blocking commands (BZPOPMIN on the
// marker, XREAD BLOCK on the events stream), held for the lifetime of a
// Worker or QueueEvents and acquired with a long-lived mark and an owner
// (see internal/dedicated, which also replaces it after a network error).
//
// On a *redis.Client it is an EphemeralConn of the client; on a
// *redis.ClusterClient one of the node serving the queue's slot (looked up
// again on every reopen). Other clients (Ring) have no dedicated
// connection: the blocking commands go through their pool, still marked
// long-lived.
//
// A blocking call is interrupted by CLIENT UNBLOCK, sent through the pool
// when its context ends; servers without CLIENT ID (miniredis) get short
// blocking timeouts instead.
type blockConn struct {
	owner string
	dc    *dedicated.Conn
}

// maxBlockWithoutUnblock caps a blocking call that cannot be interrupted.
const maxBlockWithoutUnblock = 200 * time.Millisecond

// openBlockConn opens the dedicated connection, named clientName, on the
// node serving slotKey.
func openBlockConn(ctx context.Context, rdb redis.UniversalClient, slotKey, clientName, owner string) (*blockConn, error) {
	opts := dedicated.Options{
		Owner: owner, Name: clientName, ClientID: true, PoolLongLived: true, ErrClosed: ErrClosed,
	}
	if c, ok := rdb.(*redis.ClusterClient); ok {
		opts.Node = func(ctx context.Context) (*redis.Client, error) { return c.MasterForKey(ctx, slotKey) }
	}
	b := &blockConn{owner: owner, dc: dedicated.New(rdb, opts)}
	if err := b.dc.Open(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// processor is what blocking calls run on: the dedicated connection or the
// client itself.
type processor = dedicated.Cmdable

// blockCmd is what a blocking call gets: the connection, and the handle
// that says how long it may block.
type blockCmd struct {
	processor
	h dedicated.Handle
}

// maxBlock is the longest timeout a blocking call on c may use.
func (c blockCmd) maxBlock(d time.Duration) time.Duration {
	if c.h.Dedicated() && c.h.ID == 0 && d > maxBlockWithoutUnblock {
		return maxBlockWithoutUnblock
	}
	if !c.h.Dedicated() && d > time.Second {
		return time.Second // pool fallback: no way to interrupt
	}
	return d
}

// open reopens the dedicated connection if a network error closed it.
func (b *blockConn) open(ctx context.Context) error { return b.dc.Open(ctx) }

// do runs f on the dedicated connection; when ctx ends before f returns,
// f's blocking command is interrupted with CLIENT UNBLOCK. f's context
// carries the long-lived mark and never ends by itself (so go-redis does
// not drop the connection half-way through a reply).
func (b *blockConn) do(ctx context.Context, f func(ctx context.Context, c blockCmd) error) error {
	var ctxErr error
	err := b.dc.Do(context.WithoutCancel(ctx), func(lctx context.Context, h dedicated.Handle) error {
		if ctxErr = ctx.Err(); ctxErr != nil {
			return nil
		}
		c := blockCmd{processor: h.Cmd, h: h}
		if h.ID == 0 || ctx.Done() == nil {
			return f(lctx, c)
		}
		done := make(chan struct{})
		stopped := make(chan struct{})
		go func() {
			defer close(stopped)
			select {
			case <-done:
				return
			case <-ctx.Done():
			}
			uctx := redisleak.WithOwner(context.Background(), b.owner)
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for {
				// The command may not have reached the server yet: repeat
				// until f returns.
				_ = h.Node.ClientUnblock(uctx, h.ID).Err()
				select {
				case <-done:
					return
				case <-t.C:
				}
			}
		}()
		err := f(lctx, c)
		close(done)
		<-stopped
		return err
	})
	if ctxErr != nil {
		return ctxErr
	}
	if ctx.Err() != nil && (err == nil || errors.Is(err, redis.Nil)) {
		return ctx.Err()
	}
	return err
}

// Close closes the dedicated connection once the running call returned.
// Idempotent.
func (b *blockConn) Close() error { return b.dc.Close() }

// bzpopmin runs BZPOPMIN with timeout. go-redis rounds the timeout of its
// BZPopMin down to whole seconds (and up to 1s); BullMQ blocks for
// fractions of a second, sent as a decimal string (Redis >= 6.0).
func bzpopmin(ctx context.Context, c processor, key string, timeout time.Duration) (*redis.ZWithKey, error) {
	if timeout >= time.Second {
		return c.BZPopMin(ctx, timeout.Truncate(time.Second), key).Result()
	}
	// Not a command go-redis knows as blocking: the client's ReadTimeout
	// (default 3s) covers the sub-second wait.
	cmd := redis.NewZWithKeyCmd(ctx, "bzpopmin", key, strconv.FormatFloat(timeout.Seconds(), 'f', 3, 64))
	_ = c.Process(ctx, cmd)
	return cmd.Result()
}
