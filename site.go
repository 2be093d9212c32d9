package redisleak

import (
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"unsafe"
)

// Acquisition sites are never unwound on the hot path. They come from:
//   - program counters captured when a hold outlives the command that took
//     it (Client.Conn, Watch) — once per such hold;
//   - program counters captured at dial time, for PubSub connections;
//   - for a command still running when the scan finds it too long, the
//     goroutine blocked in that connection's Read or Write, found in a
//     goroutine dump by the wrapper's address (only when reporting).
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

// goroutineStacks finds, in a dump of all goroutines, the goroutine blocked
// in Read or Write of each wanted connection, and returns its site and stack.
func goroutineStacks(want map[uintptr]*connRecord, full bool) map[*connRecord]siteInfo {
	out := make(map[*connRecord]siteInfo)
	if len(want) == 0 {
		return out
	}
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		if len(buf) >= 64<<20 {
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	for _, g := range strings.Split(string(buf), "\n\n") {
		i := strings.Index(g, "redisleak.(*trackedConn).")
		if i < 0 {
			continue
		}
		rest := g[i+len("redisleak.(*trackedConn)."):]
		p := strings.IndexByte(rest, '(')
		if p < 0 {
			continue
		}
		hex := rest[p+1:]
		if e := strings.IndexAny(hex, ",)?"); e > 0 {
			hex = hex[:e]
		}
		addr, err := strconv.ParseUint(strings.TrimPrefix(hex, "0x"), 16, 64)
		if err != nil {
			continue
		}
		rec := want[uintptr(addr)]
		if rec == nil {
			continue
		}
		out[rec] = parseGoroutine(g, full)
	}
	return out
}

type siteInfo struct {
	site  string
	stack []string
}

// parseGoroutine reads one goroutine of a runtime.Stack dump: a header line,
// then pairs of "func(args)" and "\tfile:line +0x..." lines.
func parseGoroutine(g string, full bool) siteInfo {
	lines := strings.Split(g, "\n")
	var si siteInfo
	for i := 1; i+1 < len(lines); i += 2 {
		fl := lines[i]
		if strings.HasPrefix(fl, "created by ") {
			break
		}
		fn := fl
		if p := strings.LastIndexByte(fn, '('); p > 0 {
			fn = fn[:p]
		}
		loc := strings.TrimSpace(lines[i+1])
		if sp := strings.IndexByte(loc, ' '); sp > 0 {
			loc = loc[:sp]
		}
		file, line := loc, 0
		if c := strings.LastIndexByte(loc, ':'); c > 0 {
			file = loc[:c]
			line, _ = strconv.Atoi(loc[c+1:])
		}
		if si.site == "" && !skipFrame(fn) {
			si.site = siteString(file, line, fn)
		}
		if full {
			si.stack = append(si.stack, fn+" "+loc)
		}
		if si.site != "" && !full {
			break
		}
	}
	return si
}

func connKey(c *trackedConn) uintptr { return uintptr(unsafe.Pointer(c)) }
