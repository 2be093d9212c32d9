package bullmq

import (
	"errors"
	"reflect"
	"runtime"
	"strconv"
	"strings"
)

// maxTraceFrames is how many frames a stored trace keeps: V8's default
// Error.stackTraceLimit, so Go traces are as long as Node's.
const maxTraceFrames = 10

// WithStack returns err annotated with the stack of its caller. When a
// handler returns it (wrapped or not), the job's stored stack trace shows
// those frames. Errors that carry a stack of their own (a Callers()
// []uintptr method, or a StackTrace() method returning program counters,
// as github.com/pkg/errors has) are used the same way without it.
// WithStack(nil) returns nil.
func WithStack(err error) error {
	if err == nil {
		return nil
	}
	pcs := make([]uintptr, maxTraceFrames)
	n := runtime.Callers(2, pcs)
	return &stackError{err: err, pcs: pcs[:n]}
}

type stackError struct {
	err error
	pcs []uintptr
}

func (e *stackError) Error() string      { return e.err.Error() }
func (e *stackError) Unwrap() error      { return e.err }
func (e *stackError) Callers() []uintptr { return e.pcs }

// errorCallers returns the program counters an error in err's chain
// carries, or nil.
func errorCallers(err error) []uintptr {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if c, ok := e.(interface{ Callers() []uintptr }); ok {
			return c.Callers()
		}
		if m := reflect.ValueOf(e).MethodByName("StackTrace"); m.IsValid() && m.Type().NumIn() == 0 && m.Type().NumOut() == 1 {
			out := m.Type().Out(0)
			if out.Kind() == reflect.Slice && out.Elem().Kind() == reflect.Uintptr {
				v := m.Call(nil)[0]
				pcs := make([]uintptr, v.Len())
				for i := range pcs {
					pcs[i] = uintptr(v.Index(i).Uint())
				}
				return pcs
			}
		}
	}
	return nil
}

// nodeTrace formats a trace the way Node stores err.stack:
// "<name>: <message>" then one "    at <function> (<file>:<line>)" line
// per frame, at most maxTraceFrames. name is "UnrecoverableError" for an
// Unrecoverable error, else "Error".
func nodeTrace(err error, msg string, frames []runtime.Frame) string {
	name := "Error"
	if IsUnrecoverable(err) {
		name = "UnrecoverableError"
	}
	var b strings.Builder
	b.WriteString(name)
	b.WriteString(": ")
	b.WriteString(msg)
	for i, f := range frames {
		if i == maxTraceFrames {
			break
		}
		b.WriteString("\n    at ")
		if f.Function != "" {
			b.WriteString(f.Function)
			b.WriteString(" (")
		}
		b.WriteString(f.File)
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(f.Line))
		if f.Function != "" {
			b.WriteByte(')')
		}
	}
	return b.String()
}

// framesOf resolves program counters (as runtime.Callers returns them).
func framesOf(pcs []uintptr) []runtime.Frame {
	var out []runtime.Frame
	fs := runtime.CallersFrames(pcs)
	for {
		f, more := fs.Next()
		if (f.Function != "" || f.File != "") && f.Function != "runtime.goexit" {
			out = append(out, f)
		}
		if !more || len(out) == maxTraceFrames {
			return out
		}
	}
}

// funcFrame is the frame of a function value's entry (the handler that
// returned an error carrying no stack).
func funcFrame(fn any) (runtime.Frame, bool) {
	v := reflect.ValueOf(fn)
	if v.Kind() != reflect.Func || v.IsNil() {
		return runtime.Frame{}, false
	}
	f := runtime.FuncForPC(v.Pointer())
	if f == nil {
		return runtime.Frame{}, false
	}
	file, line := f.FileLine(f.Entry())
	return runtime.Frame{Function: f.Name(), File: file, Line: line}, true
}

// callerFrames returns the stack of the calling goroutine from skip
// frames above callerFrames' caller.
func callerFrames(skip int) []runtime.Frame {
	pcs := make([]uintptr, maxTraceFrames+skip)
	n := runtime.Callers(skip+2, pcs)
	return framesOf(pcs[:n])
}

// panicFrames returns the stack of a panicking goroutine, from the
// function that panicked (the frames of the recovering defer and of the
// runtime's panic machinery left out).
func panicFrames() []runtime.Frame {
	pcs := make([]uintptr, 64)
	n := runtime.Callers(1, pcs)
	all := framesOf0(pcs[:n])
	for i, f := range all {
		if f.Function == "runtime.gopanic" {
			rest := all[i+1:]
			// a runtime error (nil map, index) goes through runtime.panic* first
			for len(rest) > 0 && strings.HasPrefix(rest[0].Function, "runtime.") {
				rest = rest[1:]
			}
			if len(rest) > maxTraceFrames {
				rest = rest[:maxTraceFrames]
			}
			return rest
		}
	}
	if len(all) > maxTraceFrames {
		all = all[:maxTraceFrames]
	}
	return all
}

// framesOf0 resolves all program counters, without the frame limit.
func framesOf0(pcs []uintptr) []runtime.Frame {
	var out []runtime.Frame
	fs := runtime.CallersFrames(pcs)
	for {
		f, more := fs.Next()
		out = append(out, f)
		if !more {
			return out
		}
	}
}
