package redisleak

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// hook is the tracker's redis.Hook. On every client it wraps dialed
// connections (dial). On the client the user instrumented (top) it also
// marks pipelines, enriches pool-timeout errors, and — only while the
// observer is unavailable — tracks commands in flight. All of it goes inert
// when the tracker closes.
type hook struct {
	t    *Tracker
	top  bool
	dial bool
}

var _ redis.Hook = (*hook)(nil)

// DialHook wraps each dialed connection.
func (h *hook) DialHook(next redis.DialHook) redis.DialHook {
	if !h.dial {
		return next
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if err != nil || c == nil || h.t.closed.Load() {
			return c, err
		}
		// The dialed address: a failover client dials "FailoverClient".
		if ra := c.RemoteAddr(); ra != nil {
			addr = ra.String()
		}
		return wrapConn(c, h.t.newRecord(ctx, addr)), nil
	}
}

// ProcessHook enriches pool timeouts and, in hooks mode, tracks the command.
func (h *hook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	if !h.top {
		return next
	}
	t := h.t
	return func(ctx context.Context, cmd redis.Cmder) error {
		if t.hookSlow.Load() != 0 { // hooks mode, or connections without a wrapper
			return t.processSlow(ctx, cmd, next)
		}
		err := next(ctx, cmd)
		if err != nil {
			err = t.commandFailed(err, cmd)
		}
		return err
	}
}

// processSlow is ProcessHook's path in hooks mode, or while connections
// opened before the tracker are in use.
func (t *Tracker) processSlow(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
	if !t.closed.Load() {
		if t.hooksMode.Load() {
			op := t.beginOp(ctx, cmd.Name(), cmd.Args())
			defer t.endOp(op)
		} else if t.legacyN.Load() > 0 {
			// Connections opened before the tracker have no wrapper to see
			// a blocking command being written: note it by goroutine.
			if g, ok := t.noteLegacyBlocking(cmd); ok {
				defer t.legacyBlock.Delete(g)
			}
		}
	}
	err := next(ctx, cmd)
	if err != nil {
		err = t.commandFailed(err, cmd)
	}
	return err
}

// commandFailed enriches a pool timeout of cmd.
func (t *Tracker) commandFailed(err error, cmd redis.Cmder) error {
	if !t.closed.Load() && !t.opts.DisablePoolTimeoutDetail && isPoolTimeout(err) {
		err = t.poolTimeoutError(err, disp.failedPool(curG()))
		cmd.SetErr(err)
	}
	return err
}

// ProcessPipelineHook marks the pipeline's checkout (kind pipeline or tx)
// and enriches pool timeouts.
func (h *hook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	if !h.top {
		return next
	}
	return func(ctx context.Context, cmds []redis.Cmder) error {
		t := h.t
		if t.closed.Load() {
			return next(ctx, cmds)
		}
		tx := len(cmds) > 0 && cmds[0].Name() == "multi"
		ctx = withMark(ctx, func(m *mark) {
			if tx {
				m.tx = true
			} else {
				m.pipeline = true
			}
		})
		if t.hooksMode.Load() {
			name := "pipeline"
			if tx {
				name = "multi"
			}
			op := t.beginOp(ctx, name, nil)
			defer t.endOp(op)
		}
		err := next(ctx, cmds)
		if err != nil && !t.opts.DisablePoolTimeoutDetail && isPoolTimeout(err) {
			err = t.poolTimeoutError(err, disp.failedPool(curG()))
			for _, c := range cmds {
				if isPoolTimeout(c.Err()) {
					c.SetErr(err)
				}
			}
		}
		return err
	}
}

func isPoolTimeout(err error) bool {
	if err == redis.ErrPoolTimeout {
		return true
	}
	var pe *PoolTimeoutError
	if errors.As(err, &pe) {
		return false // already enriched (nested clients)
	}
	return errors.Is(err, redis.ErrPoolTimeout)
}

// noteLegacyBlocking records a blocking command about to run on the
// calling goroutine, with the nanotime until which it is exempt.
func (t *Tracker) noteLegacyBlocking(cmd redis.Cmder) (uintptr, bool) {
	d, ok := cmdBlockingTimeout(cmd.Name(), cmd.Args())
	if !ok {
		return 0, false
	}
	until := int64(blockForever)
	if d != blockForever {
		until = nanotime() + int64(d) + int64(t.opts.BlockingGrace)
	}
	g := curG()
	t.legacyBlock.Store(g, until)
	return g, true
}

// cmdBlockingTimeout is blockingTimeout for a command seen by a hook (its
// name and arguments): names that cannot be blocking are rejected before
// the arguments are rendered.
func cmdBlockingTimeout(name string, args []any) (time.Duration, bool) {
	if len(name) == 0 || (name[0] != 'b' && name[0] != 'x' && name[0] != 'w') {
		return 0, false
	}
	return blockingTimeout(argsToRESP(args))
}

// argsToRESP renders command arguments the way go-redis writes them, for
// blockingTimeout.
func argsToRESP(args []any) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		var s string
		switch v := a.(type) {
		case string:
			s = v
		case []byte:
			s = string(v)
		case time.Duration:
			s = fmt.Sprint(int64(v / time.Millisecond))
		default:
			s = fmt.Sprint(v)
		}
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(s), s)
	}
	return []byte(b.String())
}
