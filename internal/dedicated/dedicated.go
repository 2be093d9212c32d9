// Package dedicated holds a Redis connection reserved for one user for that
// user's lifetime (sse's command connection, bullmq's blocking connection,
// keyspace's config connection): taken out of a client's pool with
// redisleak's long-lived mark and an owner, opened on first use (or by
// Open), and replaced after a network error.
//
// A Conn serializes its calls: one Do runs at a time. It starts no
// goroutines.
package dedicated

import (
	"context"
	"errors"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
)

// ErrClosed is what Do and Open return after Close unless Options.ErrClosed
// names another error.
var ErrClosed = errors.New("dedicated: closed")

// Cmdable is what a call runs on: a *redis.Conn, or the client itself when
// there is no dedicated connection.
type Cmdable interface {
	redis.Cmdable
	Do(ctx context.Context, args ...any) *redis.Cmd
	Process(ctx context.Context, cmd redis.Cmder) error
}

// Options configure a Conn. The zero value works: no owner, no client name,
// no CLIENT ID, the connection taken from the client passed to New when it
// is a *redis.Client (the pool otherwise).
type Options struct {
	// Owner, when set, marks every command with redisleak.WithOwner.
	Owner string

	// Name, when set, is given to every new connection with CLIENT SETNAME.
	// A named connection is an EphemeralConn: Close (and a reopen) discards
	// it instead of returning it, with its name, to the pool.
	Name string

	// ClientID reads CLIENT ID on every new connection (Handle.ID), e.g. to
	// interrupt a blocking command with CLIENT UNBLOCK. Servers without
	// CLIENT ID (miniredis) leave Handle.ID 0.
	ClientID bool

	// Node returns the client the connection is taken from; it is called
	// before every open, so that a reopen can follow a failover (e.g. a
	// ClusterClient's MasterForKey). Default: the client passed to New if it
	// is a *redis.Client. When there is neither, the Conn has no dedicated
	// connection and every call runs on the client's pool.
	Node func(ctx context.Context) (*redis.Client, error)

	// PoolLongLived keeps the long-lived mark on calls that run on the pool
	// (no dedicated connection), e.g. for blocking commands. By default they
	// run without it: they are short pool holds.
	PoolLongLived bool

	// ErrClosed is returned by Do and Open after Close (default ErrClosed),
	// so that callers can return their own package's sentinel.
	ErrClosed error
}

// Handle is what one call runs on.
type Handle struct {
	// Cmd is the dedicated connection, or the client when there is none.
	Cmd Cmdable
	// Node is the client the dedicated connection was taken from (its pool
	// can reach the same server, e.g. for CLIENT UNBLOCK); nil when Cmd is
	// the pool.
	Node *redis.Client
	// ID is the connection's CLIENT ID when Options.ClientID is set and the
	// server answers it; 0 otherwise.
	ID int64
}

// Dedicated reports whether h is a dedicated connection (not the pool).
func (h Handle) Dedicated() bool { return h.Node != nil }

// Conn is a dedicated connection, replaced after a network error. Its
// methods may be called from any goroutine; calls are serialized.
type Conn struct {
	rdb  redis.UniversalClient
	opts Options
	pool bool // no dedicated connection: run on rdb

	mu     sync.Mutex
	node   *redis.Client
	conn   *redis.Conn
	id     int64
	closed bool
}

// New returns a Conn on rdb. It does not touch Redis: the connection is
// opened by Open or by the first Do.
func New(rdb redis.UniversalClient, opts Options) *Conn {
	c := &Conn{rdb: rdb, opts: opts}
	if c.opts.ErrClosed == nil {
		c.opts.ErrClosed = ErrClosed
	}
	if c.opts.Node == nil {
		if client, ok := rdb.(*redis.Client); ok {
			c.opts.Node = func(context.Context) (*redis.Client, error) { return client, nil }
		} else {
			c.pool = true
		}
	}
	return c
}

// IsNetworkError reports whether err leaves a connection unusable: any
// error but a Redis error reply and redis.Nil (network and context errors
// included, since a command interrupted half-way leaves a reply unread).
func IsNetworkError(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	var re redis.Error
	return !errors.As(err, &re)
}

// mark returns ctx with the marks of the dedicated connection's commands.
func (c *Conn) mark(ctx context.Context) context.Context {
	ctx = redisleak.WithLongLived(ctx)
	if c.opts.Owner != "" {
		ctx = redisleak.WithOwner(ctx, c.opts.Owner)
	}
	return ctx
}

// short returns ctx with the marks of a short pool hold.
func (c *Conn) short(ctx context.Context) context.Context {
	ctx = redisleak.WithoutLongLived(ctx)
	if c.opts.Owner != "" {
		ctx = redisleak.WithOwner(ctx, c.opts.Owner)
	}
	return ctx
}

// Open opens the dedicated connection if it is not open, so that a caller
// can report a connection error at once. It returns nil without a
// dedicated connection (pool mode).
func (c *Conn) Open(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return c.opts.ErrClosed
	}
	if c.pool || c.conn != nil {
		return nil
	}
	return c.openLocked(ctx)
}

func (c *Conn) openLocked(ctx context.Context) error {
	node, err := c.opts.Node(c.short(ctx))
	if err != nil {
		return err
	}
	// A first command through the client settles go-redis's connection
	// handshake options (its maintenance-notifications auto mode rewrites
	// them on the first failed handshake) before the Conn, which reads them
	// under a lock of its own, makes its handshake. It also fails fast when
	// the server is down.
	if err := node.Ping(c.short(ctx)).Err(); err != nil {
		return err
	}
	var conn *redis.Conn
	if c.opts.Name != "" {
		conn = node.EphemeralConn()
	} else {
		conn = node.Conn()
	}
	lctx := c.mark(ctx)
	if c.opts.Name != "" {
		if err := conn.ClientSetName(lctx, c.opts.Name).Err(); err != nil {
			_ = conn.Close()
			return err
		}
	}
	c.id = 0
	if c.opts.ClientID {
		if id, err := conn.ClientID(lctx).Result(); err == nil && id > 0 {
			c.id = id
		} else if IsNetworkError(err) {
			_ = conn.Close()
			return err
		}
	}
	c.node, c.conn = node, conn
	return nil
}

func (c *Conn) dropLocked() error {
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.node, c.conn, c.id = nil, nil, 0
	return err
}

// Do runs f on the dedicated connection, opening it first if needed. f's
// context is ctx with redisleak.WithLongLived and the owner (without the
// long-lived mark, unless Options.PoolLongLived, when f runs on the pool).
// ctx's cancellation is kept: a caller whose commands must not be cut
// half-way passes context.WithoutCancel. After f returns a network error
// (IsNetworkError) the connection is closed and the next call opens a new
// one; after a Redis error reply it is kept. Do returns f's error, or the
// error of opening the connection.
func (c *Conn) Do(ctx context.Context, f func(ctx context.Context, h Handle) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return c.opts.ErrClosed
	}
	if c.pool {
		pctx := c.short(ctx)
		if c.opts.PoolLongLived {
			pctx = c.mark(ctx)
		}
		return f(pctx, Handle{Cmd: c.rdb})
	}
	if c.conn == nil {
		if err := c.openLocked(ctx); err != nil {
			return err
		}
	}
	err := f(c.mark(ctx), Handle{Cmd: c.conn, Node: c.node, ID: c.id})
	if IsNetworkError(err) {
		_ = c.dropLocked()
	}
	return err
}

// Close closes the dedicated connection (a named one is discarded, an
// unnamed one returns to its pool) after the running Do, if any, returned.
// Later calls return Options.ErrClosed. Close is idempotent: a second call
// returns nil.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	return c.dropLocked()
}
