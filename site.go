package redisleak

import (
	"bytes"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
)

// Acquisition sites are never unwound on the hot path. They come from:
//   - program counters captured when a hold outlives the command that took
//     it (Client.Conn, Watch) — once per such hold;
//   - program counters captured at dial time, for PubSub connections;
//   - for a command still running when the scan finds it too long, the
//     goroutine blocked in that connection's Read, found in the goroutine
//     profile by the connection's slot (only when reporting; see
//     stuckSites).
//
// A site is the first frame outside go-redis and this package.

const rootPkgPrefix = "github.com/redisleak/redisleak."

func skipFrame(fn string) bool {
	return fn == "" ||
		// go-redis hooks of the application or other libraries (logging,
		// tracing): the closures returned by the redis.Hook methods
		strings.Contains(fn, ".ProcessHook.func") ||
		strings.Contains(fn, ".ProcessPipelineHook.func") ||
		strings.Contains(fn, ".DialHook.func") ||
		strings.HasPrefix(fn, "github.com/redis/go-redis/") ||
		strings.HasPrefix(fn, rootPkgPrefix) ||
		// the companions' shared helpers (a dedicated connection's open):
		// the site is the companion code that uses them
		strings.HasPrefix(fn, "github.com/redisleak/redisleak/internal/") ||
		strings.HasPrefix(fn, "runtime.") ||
		strings.HasPrefix(fn, "runtime/") ||
		strings.HasPrefix(fn, "sync.") ||
		strings.HasPrefix(fn, "context.") ||
		// the I/O path below a blocked Read or Write
		strings.HasPrefix(fn, "internal/") ||
		strings.HasPrefix(fn, "net.") ||
		strings.HasPrefix(fn, "syscall.") ||
		strings.HasPrefix(fn, "bufio.") ||
		strings.HasPrefix(fn, "io.") ||
		strings.HasPrefix(fn, "crypto/tls.")
}

// shortFunc strips the import path: "github.com/a/b.(*T).M" -> "b.(*T).M".
func shortFunc(fn string) string {
	if i := strings.LastIndexByte(fn, '/'); i >= 0 {
		return fn[i+1:]
	}
	return fn
}

func siteString(file string, line int, fn string) string {
	return filepath.Base(file) + ":" + strconv.Itoa(line) + " " + shortFunc(fn)
}

// sitesFromPCs symbolises program counters: the site, and the whole stack
// when full is set.
func sitesFromPCs(pcs []uintptr, full bool) (site string, stack []string) {
	if len(pcs) == 0 {
		return "", nil
	}
	frames := runtime.CallersFrames(pcs)
	for {
		f, more := frames.Next()
		if site == "" && !skipFrame(f.Function) {
			site = siteString(f.File, f.Line, f.Function)
		}
		if full {
			stack = append(stack, f.Function+" "+f.File+":"+strconv.Itoa(f.Line))
		}
		if !more || (site != "" && !full) {
			break
		}
	}
	return site, stack
}

// stuckSites finds the goroutine blocked in Read of each record's
// connection, and returns its site and, with full, its stack (a goroutine
// stuck in Write is not found: Write does not spell out the slot, see
// conn.go).
//
// It reads the goroutine profile, which the runtime collects concurrently
// with only brief pauses however many goroutines there are (unlike a dump of
// all goroutines' stacks with runtime.Stack, which stops the world for the
// whole dump). The profile has program counters, not argument values: the
// connection is recognised by its slot, which its Read spells out by the
// line it calls the inner connection from (trampolines.go). A connection
// whose slot is shared, changed hands meanwhile, or is in more than one
// goroutine's Read gets no site rather than a wrong one.
func stuckSites(recs []*connRecord, full bool) map[*connRecord]siteInfo {
	out := make(map[*connRecord]siteInfo)
	type wanted struct {
		rec   *connRecord
		gen   uint64
		n     int // goroutines found in the slot's Read
		stack []uintptr
	}
	want := make(map[uint16]*wanted)
	for _, r := range recs {
		c := r.conn
		if c == nil || c.released.Load() {
			continue
		}
		if gen, alone := slots.owner(c.slot); alone {
			want[c.slot] = &wanted{rec: r, gen: gen}
		}
	}
	if len(want) == 0 {
		return out
	}
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		return out
	}
	var ps pcSlots
	var pcs []uintptr
	for prof := buf.Bytes(); len(prof) > 0; {
		line := prof
		if i := bytes.IndexByte(prof, '\n'); i >= 0 {
			line, prof = prof[:i], prof[i+1:]
		} else {
			prof = nil
		}
		// a stack: "count @ pc pc ...", innermost first; its frames
		// follow on lines that begin with '#'
		count, stack, ok := parseProfileStack(line, pcs[:0])
		if !ok {
			continue
		}
		pcs = stack
		for _, pc := range stack {
			slot, ok := ps.slot(pc)
			if !ok {
				continue
			}
			if w := want[slot]; w != nil {
				w.n += count
				if w.stack == nil {
					w.stack = append([]uintptr(nil), stack...)
				}
			}
		}
	}
	for slot, w := range want {
		if w.n != 1 {
			continue
		}
		if gen, alone := slots.owner(slot); !alone || gen != w.gen || w.rec.conn.released.Load() {
			continue
		}
		var si siteInfo
		si.site, si.stack = sitesFromPCs(w.stack, full)
		out[w.rec] = si
	}
	return out
}

// parseProfileStack reads "count @ 0xpc 0xpc ..." into pcs.
func parseProfileStack(line []byte, pcs []uintptr) (count int, _ []uintptr, ok bool) {
	at := bytes.Index(line, []byte(" @ "))
	if at <= 0 || line[0] < '0' || line[0] > '9' {
		return 0, pcs, false
	}
	count, err := strconv.Atoi(string(line[:at]))
	if err != nil {
		return 0, pcs, false
	}
	for _, f := range bytes.Fields(line[at+3:]) {
		pc, err := strconv.ParseUint(strings.TrimPrefix(string(f), "0x"), 16, 64)
		if err != nil {
			return 0, pcs, false
		}
		pcs = append(pcs, uintptr(pc))
	}
	return count, pcs, true
}

// pcSlots caches, by return address, the slot that a return into a
// wrapper's Read names, or -1 for any other address.
type pcSlots map[uintptr]int16

// The functions that spell out a slot (trampolines.go), and the line of
// their first case's call.
const (
	readFunc    = rootPkgPrefix + "(*trackedConn).Read"
	readFuncTCP = rootPkgPrefix + "(*trackedTCPConn).Read"
)

// slot reads a slot off return address pc, one frame of a goroutine's
// stack: for a return into a Read of trampolines.go from its call of the
// inner connection's Read, on line readLine0… + readLineStep*s (see
// gen_trampolines.go), the slot s. Read calls the inner connection itself,
// so its frame is the one just above the inner connection's, and it alone
// names the slot: the frames around it do not matter. (The autogenerated
// method that promotes trackedConn's Read to trackedSyscallConn leaves no
// frame anyway: it jumps to Read, unless instrumented, and tracebacks leave
// such wrappers out.)
func (ps *pcSlots) slot(pc uintptr) (uint16, bool) {
	if *ps == nil {
		*ps = make(pcSlots)
	}
	slot, ok := (*ps)[pc]
	if !ok {
		slot = -1
		// with inlining, FuncForPC and FileLine describe the innermost
		// function at pc: Read is too large to be inlined, but a caller
		// that inlined it would not hide it; and were the inner Read
		// inlined into Read (devirtualized with PGO), the stack would
		// still have a frame for Read: the profile's stacks have one for
		// each inlined call, at the address of the call
		if f := runtime.FuncForPC(pc - 1); f != nil {
			line0 := -1
			switch f.Name() {
			case readFunc:
				line0 = readLine0
			case readFuncTCP:
				line0 = readLine0TCP
			}
			file, line := f.FileLine(pc - 1)
			d := line - line0
			if line0 >= 0 && filepath.Base(file) == "trampolines.go" && d >= 0 && d%readLineStep == 0 && d/readLineStep < numSlots {
				slot = int16(d / readLineStep)
			}
		}
		(*ps)[pc] = slot
	}
	if slot < 0 {
		return 0, false
	}
	return uint16(slot), true
}

type siteInfo struct {
	site  string
	stack []string
}
