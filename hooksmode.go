// Hooks mode: when something else replaced go-redis's process-wide recorder
// (redis.SetOTelRecorder), the observer no longer reaches the tracker, which
// falls back to what its process hook sees: commands in flight (see
// Tracker.checkMode). Everything about that mode is here.

package redisleak

import (
	"context"
	"runtime"
	"sync"
	"time"
)

// inflight tracks commands in flight while the observer is unavailable.
type inflight struct {
	ifMu        sync.Mutex
	ops         map[*inflightOp]struct{}
	reportedOps map[*inflightOp]bool
}

type inflightOp struct {
	start   int64
	mark    *mark
	name    string
	pcs     []uintptr
	block   time.Duration
	blocked bool
}

func (t *Tracker) beginOp(ctx context.Context, name string, args []any) *inflightOp {
	op := &inflightOp{start: nanotime(), mark: markFrom(ctx), name: name}
	if args != nil {
		op.block, op.blocked = cmdBlockingTimeout(name, args)
	}
	var pcs [maxStackDepth]uintptr
	n := runtime.Callers(3, pcs[:t.opts.StackDepth])
	op.pcs = append([]uintptr(nil), pcs[:n]...)
	t.ifMu.Lock()
	if t.ops == nil {
		t.ops = make(map[*inflightOp]struct{})
	}
	t.ops[op] = struct{}{}
	t.ifMu.Unlock()
	return op
}

func (t *Tracker) endOp(op *inflightOp) {
	t.ifMu.Lock()
	delete(t.ops, op)
	delete(t.reportedOps, op)
	t.ifMu.Unlock()
	t.holds.push(kCommand, nanotime()-op.start)
}

func (t *Tracker) inflightOps() []*inflightOp {
	t.ifMu.Lock()
	defer t.ifMu.Unlock()
	out := make([]*inflightOp, 0, len(t.ops))
	for op := range t.ops {
		out = append(out, op)
	}
	return out
}

// evaluateOp classifies a command in flight (hooks mode) as evaluate does a
// connection's hold.
func (t *Tracker) evaluateOp(op *inflightOp, now int64) holdView {
	v := holdView{held: time.Duration(now - op.start), kind: KindCommand}
	v.longLived = op.mark != nil && op.mark.longLived
	if op.blocked {
		v.kind = KindBlocking
		if op.block == blockForever || v.held < op.block+t.opts.BlockingGrace {
			v.longLived = true
		}
	}
	v.threshold = t.threshold(v.kind, op.mark)
	v.leaked = !v.longLived && v.held > v.threshold
	return v
}

// scanInflight reports, in hooks mode, commands in flight for too long.
func (t *Tracker) scanInflight(now int64) []Leak {
	if !t.hooksMode.Load() {
		return nil
	}
	var out []Leak
	for _, op := range t.inflightOps() {
		v := t.evaluateOp(op, now)
		if !v.leaked {
			continue
		}
		t.ifMu.Lock()
		if t.reportedOps == nil {
			t.reportedOps = map[*inflightOp]bool{}
		}
		seen := t.reportedOps[op]
		t.reportedOps[op] = true
		t.ifMu.Unlock()
		if seen {
			continue
		}
		l := Leak{Kind: v.kind, AcquiredAt: unixAt(op.start), HeldFor: v.held, MaxHold: v.threshold, Leaked: true}
		if op.mark != nil {
			l.Owner = op.mark.owner
		}
		l.Site, l.Stack = sitesFromPCs(op.pcs, t.opts.FullStacks)
		out = append(out, l)
	}
	return out
}
