package redisleak

import (
	"bytes"
	"net"
	"os"
	"os/exec"
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

// TestTrampolinesSpellTheSlot: every slot's Read (and a write through the
// same trampolines) passes through the trampolines of its digits, and the
// profile parser reads the slot back.
func TestTrampolinesSpellTheSlot(t *testing.T) {
	var pt pcTrampolines
	for slot := range uint16(numSlots) {
		c := &trackedConn{Conn: &stackConn{}, slot: slot}
		for _, write := range []bool{false, true} {
			if write {
				_, _ = ioA[c.slot>>6&63](c, nil, true)
			} else {
				_, _ = c.Read(nil)
			}
			pcs := c.Conn.(*stackConn).pcs
			var got []uint16
			for i := 0; i+1 < len(pcs); i++ {
				if s, ok := pt.slotAt(pcs[i:]); ok {
					got = append(got, s)
				}
			}
			if len(got) != 1 || got[0] != slot {
				t.Fatalf("slot %#x (write %v): read back %#x", slot, write, got)
			}
		}
	}
	// every trampoline was seen, each told apart by its name
	codes := make(map[int8]bool)
	for _, code := range pt {
		if code >= 0 {
			codes[code] = true
		}
	}
	if len(codes) != len(ioA)+len(ioB) {
		t.Fatalf("%d trampolines recognised, want %d", len(codes), len(ioA)+len(ioB))
	}
}

// stackConn records the caller's stack on Read and Write.
type stackConn struct {
	net.Conn
	pcs []uintptr
}

func (c *stackConn) Read(p []byte) (int, error)  { return c.record() }
func (c *stackConn) Write(p []byte) (int, error) { return c.record() }

//go:noinline
func (c *stackConn) record() (int, error) {
	pcs := make([]uintptr, 64)
	// the return addresses from the caller of Read or Write on, as in the
	// goroutine profile
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

// goroutineInRead reports whether a goroutine is in an I/O trampoline.
func goroutineInRead() bool {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
	return strings.Contains(b.String(), "redisleak.ioB")
}
