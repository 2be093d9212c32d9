package redisleak

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"
)

// TestTrampolinesUpToDate: the committed trampolines.go is what
// gen_trampolines.go writes.
func TestTrampolinesUpToDate(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = runtime.GOROOT() + "/bin/go"
	}
	got, err := exec.Command(goBin, "run", "gen_trampolines.go").Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go run gen_trampolines.go: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	committed, err := os.ReadFile("trampolines.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, committed) {
		t.Fatal("trampolines.go differs from the generator's output: run go generate")
	}
}

// TestTrampolinesSpellTheSlot: every slot's Read, called on a trackedConn or
// promoted to a trackedSyscallConn, calls the inner connection from a line
// that names the slot, and the profile parser reads the slot back, from that
// frame only.
func TestTrampolinesSpellTheSlot(t *testing.T) {
	var ps pcSlots
	for slot := range uint16(numSlots) {
		sc := &stackConn{}
		plain := &trackedConn{Conn: sc, slot: slot}
		promoted := &trackedSyscallConn{trackedConn: trackedConn{Conn: sc, slot: slot}}
		for _, c := range []net.Conn{plain, promoted} {
			sc.pcs = nil
			_, _ = c.Read(nil)
			var got []uint16
			for i, pc := range sc.pcs {
				if s, ok := ps.slot(pc); ok {
					if i != 0 {
						t.Fatalf("slot %#x (%T): read back from frame %d, want the first above the inner connection's", slot, c, i)
					}
					got = append(got, s)
				}
			}
			if len(got) != 1 || got[0] != slot {
				t.Fatalf("slot %#x (%T): read back %#x", slot, c, got)
			}
		}
	}
	// every line of Read was seen, each told apart
	lines := make(map[int16]bool)
	for _, s := range ps {
		if s >= 0 {
			lines[s] = true
		}
	}
	if len(lines) != numSlots {
		t.Fatalf("%d lines recognised, want %d", len(lines), numSlots)
	}
}

// TestReadCallLines: the line of each of Read's calls is where the
// generator says, by the compiler's own account (the position of the call
// instruction, from the return address the call leaves), and Read's frame
// is the first above the inner connection's, and is followed by its
// caller's, on a trackedSyscallConn too (no promotion wrapper).
func TestReadCallLines(t *testing.T) {
	seen := make(map[int]bool)
	for slot := range uint16(numSlots) {
		sc := &stackConn{}
		for _, c := range []net.Conn{
			&trackedConn{Conn: sc, slot: slot},
			&trackedSyscallConn{trackedConn: trackedConn{Conn: sc, slot: slot}},
		} {
			_, _ = c.Read(nil)
			frames := runtime.CallersFrames(sc.pcs)
			read, _ := frames.Next()
			caller, _ := frames.Next()
			if want := readLine0 + readLineStep*int(slot); read.Function != readFunc || read.Line != want || filepath.Base(read.File) != "trampolines.go" {
				t.Fatalf("slot %#x (%T): first frame %s at %s:%d, want Read at trampolines.go:%d", slot, c, read.Function, read.File, read.Line, want)
			}
			if caller.Function != rootPkgPrefix+"TestReadCallLines" {
				t.Fatalf("slot %#x (%T): Read called from %s, want the test", slot, c, caller.Function)
			}
			seen[read.Line] = true
		}
	}
	if len(seen) != numSlots {
		t.Fatalf("%d lines, want %d", len(seen), numSlots)
	}
}

// stackConn records the caller's stack on Read.
type stackConn struct {
	net.Conn
	pcs []uintptr
}

func (c *stackConn) Read(p []byte) (int, error) { return c.record() }

//go:noinline
func (c *stackConn) record() (int, error) {
	pcs := make([]uintptr, 64)
	// the return addresses from the caller of Read on, as in the goroutine
	// profile
	c.pcs = pcs[:runtime.Callers(3, pcs)]
	return 0, nil
}

// TestStuckSitesSharedSlot: a connection whose slot another live connection
// shares gets no site (the match would be ambiguous); once it is alone in its
// slot, its stuck Read is found.
func TestStuckSitesSharedSlot(t *testing.T) {
	tr := &Tracker{}
	tr.opts.BlockingGrace = DefaultBlockingGrace
	client, server := net.Pipe()
	defer server.Close()
	rec := &connRecord{tr: tr}
	w := wrapConn(client, rec).(*trackedConn)
	defer w.Close()

	// take every other slot, so that the next one handed out is shared
	var others []*trackedConn
	defer func() {
		for _, o := range others {
			_ = o.Close()
		}
	}()
	for {
		c, _ := net.Pipe()
		o := wrapConn(c, &connRecord{tr: tr}).(*trackedConn)
		others = append(others, o)
		if o.slot == w.slot {
			break
		}
		if len(others) > 2*numSlots {
			t.Fatal("slots are never shared")
		}
	}

	go func() { _, _ = w.Read(make([]byte, 1)) }() // blocks until the pipe closes
	deadline := time.Now().Add(10 * time.Second)
	for !goroutineInRead() {
		if time.Now().After(deadline) {
			t.Fatal("the reader never blocked")
		}
		time.Sleep(time.Millisecond)
	}
	if si, ok := stuckSites([]*connRecord{rec}, false)[rec]; ok {
		t.Fatalf("shared slot %#x: got site %q, want none", w.slot, si.site)
	}
	// the sharer closes: the slot is the reader's alone again
	_ = others[len(others)-1].Close()
	si, ok := stuckSites([]*connRecord{rec}, true)[rec]
	// (the site itself is "": every frame is in this package)
	if !ok || !strings.Contains(strings.Join(si.stack, "\n"), "redisleak.TestStuckSitesSharedSlot.func") {
		t.Fatalf("slot %#x alone: found %v, stack %q, want the reading closure", w.slot, ok, si.stack)
	}
}

// goroutineInRead reports whether a goroutine is in a wrapper's Read.
func goroutineInRead() bool {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
	return strings.Contains(b.String(), readFunc+"+") || strings.Contains(b.String(), readFuncTCP+"+")
}

// TestStuckSitesTCPConn: a Read blocked on a TCP connection, whose wrapper
// is a trackedTCPConn (its own Read), is found in the goroutine profile.
func TestStuckSitesTCPConn(t *testing.T) {
	client, server := tcpPair(t)
	defer server.Close()
	w, ok := wrapConn(client, &connRecord{tr: newTestTracker()}).(*trackedTCPConn)
	if !ok {
		t.Fatalf("wrapped a TCP connection in %T", w)
	}
	testStuckSite(t, w, w.tc.addr.rec, w.tc.slot)
}

// TestStuckSitesSyscallConn: a Read blocked on a Unix socket, whose wrapper
// is a trackedSyscallConn (Read promoted from trackedConn), is found in the
// goroutine profile.
func TestStuckSitesSyscallConn(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	inner, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	w, ok := wrapConn(inner, &connRecord{tr: newTestTracker()}).(*trackedSyscallConn)
	if !ok {
		t.Fatalf("wrapped a Unix socket in %T", w)
	}
	testStuckSite(t, w, w.addr.rec, w.slot)
}

func newTestTracker() *Tracker {
	tr := &Tracker{}
	tr.opts.BlockingGrace = DefaultBlockingGrace
	return tr
}

// tcpPair returns both ends of a loopback TCP connection; the client end
// is closed at the end of the test.
func tcpPair(t testing.TB) (client, server net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		_ = client.Close()
		t.Fatal(err)
	}
	return client, server
}

// testStuckSite blocks a Read on w (record rec, slot slot) and checks that
// stuckSites finds the reading goroutine. It closes w.
func testStuckSite(t *testing.T, w net.Conn, rec *connRecord, slot uint16) {
	t.Helper()
	defer w.Close()
	go func() { _, _ = w.Read(make([]byte, 1)) }() // blocks until the connection closes
	deadline := time.Now().Add(10 * time.Second)
	for !goroutineInRead() {
		if time.Now().After(deadline) {
			t.Fatal("the reader never blocked")
		}
		time.Sleep(time.Millisecond)
	}
	si, ok := stuckSites([]*connRecord{rec}, true)[rec]
	if !ok || !strings.Contains(strings.Join(si.stack, "\n"), "redisleak.testStuckSite.func") {
		t.Fatalf("%T, slot %#x: found %v, stack %q, want the reading closure", w, slot, ok, si.stack)
	}
}

// TestProfileSpellsSlots: Reads blocked on every slot at once, on
// trackedConns, trackedSyscallConns and (every 16th slot: a TCP connection
// each) trackedTCPConns, are each read back from the goroutine profile.
// (The slots are set by hand, not taken from the slot table: stuckSites is
// not involved.)
func TestProfileSpellsSlots(t *testing.T) {
	want := make(map[uint16]bool)
	var servers []net.Conn
	defer func() {
		for _, s := range servers {
			_ = s.Close()
		}
	}()
	for slot := range uint16(numSlots) {
		var c net.Conn
		switch {
		case slot%16 == 2:
			client, server := tcpPair(t)
			servers = append(servers, server, client)
			w := &trackedTCPConn{TCPConn: client.(*net.TCPConn)}
			w.tc = trackedConn{Conn: client, slot: slot}
			c = w
		case slot%2 == 1:
			client, server := net.Pipe()
			servers = append(servers, server)
			c = &trackedSyscallConn{trackedConn: trackedConn{Conn: client, slot: slot}}
		default:
			client, server := net.Pipe()
			servers = append(servers, server)
			c = &trackedConn{Conn: client, slot: slot}
		}
		want[slot] = true
		go func() { _, _ = c.Read(make([]byte, 1)) }() // until the server side closes
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var buf bytes.Buffer
		if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
			t.Fatal(err)
		}
		var ps pcSlots
		got := make(map[uint16]int)
		for _, line := range bytes.Split(buf.Bytes(), []byte("\n")) {
			count, stack, ok := parseProfileStack(line, nil)
			if !ok || !readsOfThisTest(stack) {
				continue // other tests' connections may be in a Read too
			}
			for _, pc := range stack {
				if s, ok := ps.slot(pc); ok {
					got[s] += count
				}
			}
		}
		missing := 0
		for s := range want {
			if got[s] != 1 {
				missing++
			}
		}
		for s := range got {
			if !want[s] {
				t.Fatalf("slot %#x read back, not blocked on", s)
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d slots not read back once: %v", missing, len(want), got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readsOfThisTest reports whether a stack is of a goroutine that
// TestProfileSpellsSlots started.
func readsOfThisTest(stack []uintptr) bool {
	for _, pc := range stack {
		if f := runtime.FuncForPC(pc - 1); f != nil && strings.HasPrefix(f.Name(), rootPkgPrefix+"TestProfileSpellsSlots.func") {
			return true
		}
	}
	return false
}
