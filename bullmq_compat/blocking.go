package bullmq

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redisleak/redisleak"
)

// blockConn is a connection dedicated to blocking commands (BZPOPMIN on the
// marker, XREAD BLOCK on the events stream), held for the lifetime of a
// Worker or QueueEvents and acquired with a long-lived mark and an owner.
//
// On a *redis.Client it is a Client.Conn; on a *redis.ClusterClient the Conn
// of the node serving the queue's slot. Other clients (Ring) have no
// dedicated connection: the blocking commands go through their pool,
// still marked long-lived.
//
// A blocking call is interrupted by CLIENT UNBLOCK, sent through the pool
// when its context ends; servers without CLIENT ID (miniredis) get short
// blocking timeouts instead.
type blockConn struct {
	owner string
	node  *redis.Client // nil: use pool
	pool  redis.UniversalClient
	conn  *redis.Conn
	id    int64 // CLIENT ID of conn, 0 when unknown

	mu     sync.Mutex
	closed bool
}

// maxBlockWithoutUnblock caps a blocking call that cannot be interrupted.
const maxBlockWithoutUnblock = 200 * time.Millisecond

func openBlockConn(ctx context.Context, rdb redis.UniversalClient, slotKey, clientName, owner string) (*blockConn, error) {
	b := &blockConn{owner: owner, pool: rdb}
	lctx := b.longLived(ctx)
	switch c := rdb.(type) {
	case *redis.Client:
		b.node = c
	case *redis.ClusterClient:
		n, err := c.MasterForKey(lctx, slotKey)
		if err != nil {
			return nil, err
		}
		b.node = n
	default:
		return b, nil
	}
	// A first command through the client settles go-redis's connection
	// handshake options (its maintenance-notifications auto mode rewrites
	// them on the first failed handshake) before the Conn, which reads
	// them under a lock of its own, makes its handshake.
	if err := b.node.Ping(redisleak.WithOwner(context.WithoutCancel(ctx), owner)).Err(); err != nil {
		return nil, err
	}
	b.conn = b.node.EphemeralConn() // closed, not pooled, on Close: its client name goes with it
	if clientName != "" {
		if err := b.conn.ClientSetName(lctx, clientName).Err(); err != nil {
			_ = b.conn.Close()
			return nil, err
		}
	}
	if id, err := b.conn.ClientID(lctx).Result(); err == nil && id > 0 {
		b.id = id
	}
	return b, nil
}

func (b *blockConn) longLived(ctx context.Context) context.Context {
	return redisleak.WithOwner(redisleak.WithLongLived(context.WithoutCancel(ctx)), b.owner)
}

// processor is what blocking calls run on: a Conn or the client itself.
type processor interface {
	redis.Cmdable
	Process(ctx context.Context, cmd redis.Cmder) error
}

func (b *blockConn) cmdable() processor {
	if b.conn != nil {
		return b.conn
	}
	return b.pool
}

// maxBlock is the longest timeout a blocking call may use.
func (b *blockConn) maxBlock(d time.Duration) time.Duration {
	if b.id == 0 && b.conn != nil && d > maxBlockWithoutUnblock {
		return maxBlockWithoutUnblock
	}
	if b.conn == nil && d > time.Second {
		return time.Second // pool fallback: no way to interrupt
	}
	return d
}

// do runs f on the dedicated connection; when ctx ends before f returns,
// f's blocking command is interrupted with CLIENT UNBLOCK. f's context
// carries the long-lived mark and never ends by itself (so go-redis does
// not drop the connection half-way through a reply).
func (b *blockConn) do(ctx context.Context, f func(ctx context.Context, c processor) error) error {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	lctx := b.longLived(ctx)
	if b.id == 0 || ctx.Done() == nil {
		return f(lctx, b.cmdable())
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
			_ = b.node.ClientUnblock(uctx, b.id).Err()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	err := f(lctx, b.cmdable())
	close(done)
	<-stopped
	if ctx.Err() != nil && (err == nil || errors.Is(err, redis.Nil)) {
		return ctx.Err()
	}
	return err
}

// Close returns the dedicated connection. Idempotent.
func (b *blockConn) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if b.conn != nil {
		return b.conn.Close()
	}
	return nil
}

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
