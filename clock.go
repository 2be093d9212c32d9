// The tracker's clock: the runtime's monotonic nanotime, reached with
// go:linkname (one vDSO call per read, without the wall-clock read that
// time.Now adds; two reads per hold are on the hot path).
//
// Upgrade risk: runtime.nanotime is one of the runtime symbols Go keeps
// reachable by linkname for existing programs ("push" linknames), but it is
// not a public API. If a Go release removes it, the build fails here (it
// never misbehaves silently); the fix is nanotime() { return
// int64(time.Since(clockBase)) }, at the cost of a wall-clock read per call.

package redisleak

import (
	"time"
	_ "unsafe" // go:linkname
)

// runtimeNano is the runtime's monotonic clock: one vDSO call, without the
// wall-clock read that time.Now adds.
//
//go:linkname runtimeNano runtime.nanotime
func runtimeNano() int64

var (
	clockBase     = time.Now()
	clockBaseNano = runtimeNano()
)

// nanotime returns monotonic nanoseconds since the package was loaded.
func nanotime() int64 { return runtimeNano() - clockBaseNano }

// unixAt converts a nanotime value to wall time.
func unixAt(n int64) time.Time { return clockBase.Add(time.Duration(n)) }
