package bullmq

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// nodeTraceShape is the shape of Node's err.stack: a "Name: message" line,
// then "    at ..." frame lines.
var nodeTraceShape = regexp.MustCompile(`^(Error|UnrecoverableError): [^\n]+(\n    at [^\n]+)+$`)

//go:noinline
func explode() { panic("kaboom") }

//go:noinline
func deepFailure() error { return WithStack(errors.New("deep")) }

//go:noinline
func nilMapWrite() {
	var m map[string]int
	m["x"] = 1
}

// TestNodeShapedStackTraces: the traces a Go worker stores have the shape
// of those a Node worker stores (checked on a Node worker's own trace in
// the same test), with Go frames: the handler's for a returned error, the
// panicking function's for a panic, the error's own when it carries a
// stack; at most 10 frames (V8's default), and stackTraceLimit is kept.
// Node's getFailed reads them.
func TestNodeShapedStackTraces(t *testing.T) {
	needNode(t)
	rdb, name := realClient(t)
	ctx := ctxT(t, 60*time.Second)
	q, _ := NewQueue(rdb, name, QueueOptions{})
	w, _ := NewWorker(rdb, name, func(ctx context.Context, j *Job) (any, error) {
		switch j.Name {
		case "returned":
			return nil, errors.New("boom")
		case "panic":
			explode()
		case "runtime-panic":
			nilMapWrite()
		case "own-stack":
			return nil, deepFailure()
		case "unrecoverable":
			return nil, Unrecoverable(errors.New("give up"))
		case "limited":
			return nil, errors.New("again")
		}
		return nil, nil
	}, WorkerOptions{})
	for _, n := range []string{"returned", "panic", "runtime-panic", "own-stack", "unrecoverable"} {
		if _, err := q.Add(ctx, n, nil, JobOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.Add(ctx, "limited", nil, JobOptions{Attempts: 3, StackTraceLimit: 2}); err != nil {
		t.Fatal(err)
	}
	startWorker(t, w)
	waitEvents(t, rdb, q, 6, "failed")
	// A Node worker's trace, for the shape.
	nodeQ := name + "-node"
	runNode(t, 30*time.Second, "add", nodeParams(t, rdb, nodeQ, map[string]any{"jobs": []map[string]any{
		{"name": "node", "data": map[string]any{"failTimes": 1}},
	}}), nil)
	runNode(t, 30*time.Second, "work", nodeParams(t, rdb, nodeQ, map[string]any{"count": 1}), nil)
	var nodeSide nodeCounts
	runNode(t, 30*time.Second, "counts", nodeParams(t, rdb, nodeQ, nil), &nodeSide)
	if len(nodeSide.Failed) != 1 || len(nodeSide.Failed[0].Stacktrace) != 1 || !nodeTraceShape.MatchString(nodeSide.Failed[0].Stacktrace[0]) {
		t.Fatalf("Node's own trace does not have the expected shape: %+v", nodeSide.Failed)
	}

	var nc nodeCounts
	runNode(t, 30*time.Second, "counts", nodeParams(t, rdb, name, nil), &nc)
	got := map[string][]string{}
	for _, f := range nc.Failed {
		got[f.ID] = f.Stacktrace
	}
	for id, want := range map[string]struct{ first, frame string }{
		"1": {"Error: boom", "bullmq_compat.TestNodeShapedStackTraces.func1 ("},
		"2": {"Error: kaboom", "bullmq_compat.explode ("},
		"3": {"Error: assignment to entry in nil map", "bullmq_compat.nilMapWrite ("},
		"4": {"Error: deep", "bullmq_compat.deepFailure ("},
		"5": {"UnrecoverableError: give up", "bullmq_compat.TestNodeShapedStackTraces.func1 ("},
		"6": {"Error: again", "bullmq_compat.TestNodeShapedStackTraces.func1 ("},
	} {
		st := got[id]
		if len(st) == 0 {
			t.Errorf("job %s: no stack trace in Node's getFailed (%+v)", id, nc.Failed)
			continue
		}
		tr := st[len(st)-1]
		lines := strings.Split(tr, "\n")
		if !nodeTraceShape.MatchString(tr) || lines[0] != want.first || !strings.Contains(lines[1], want.frame) ||
			!strings.Contains(lines[1], "_test.go:") || len(lines) > 11 {
			t.Errorf("job %s: trace\n%s\nwant first line %q, first frame with %q, at most 10 frames", id, tr, want.first, want.frame)
		}
	}
	if n := len(got["6"]); n != 2 {
		t.Errorf("job 6 (3 attempts, stackTraceLimit 2) keeps %d traces", n)
	}
}

// pkgStack mimics github.com/pkg/errors: StackTrace() returns a slice of a
// uintptr-based Frame type.
type pkgFrame uintptr
type pkgStack struct {
	msg string
	st  []pkgFrame
}

func (e *pkgStack) Error() string          { return e.msg }
func (e *pkgStack) StackTrace() []pkgFrame { return e.st }
func newPkgStack(msg string) error {
	pcs := make([]uintptr, 10)
	n := runtime.Callers(1, pcs)
	st := make([]pkgFrame, n)
	for i := range st {
		st[i] = pkgFrame(pcs[i])
	}
	return &pkgStack{msg: msg, st: st}
}

// TestTraceOfErrorsCarryingStacks: the frames of errors that carry their
// own (WithStack, a pkg/errors-style StackTrace, wrapped) are the trace's.
func TestTraceOfErrorsCarryingStacks(t *testing.T) {
	w := &Worker{h: func(context.Context, *Job) (any, error) { return nil, nil }}
	for name, err := range map[string]error{
		"WithStack":          WithStack(errors.New("a")),
		"pkg/errors wrapped": fmt.Errorf("ctx: %w", newPkgStack("b")),
	} {
		tr := w.trace(err)
		lines := strings.Split(tr, "\n")
		if !nodeTraceShape.MatchString(tr) || !strings.Contains(lines[1], "TestTraceOfErrorsCarryingStacks") && !strings.Contains(lines[1], "newPkgStack") {
			t.Errorf("%s: trace\n%s", name, tr)
		}
	}
}
