package redisleak

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

//go:generate go run gen_trampolines.go -o trampolines.go

// trackedConn wraps a net.Conn dialed through a tracked client. It exists for
// three reasons: its RemoteAddr identifies the connection to the observer
// without a map lookup, its Read calls the inner connection from a line
// that names the connection's slot in the goroutine profile (so a stuck
// command's holder can be found without stopping the world, see
// stuckSites), and Write notices blocking commands as they are sent.
//
// It changes nothing go-redis relies on: deadlines, errors and Close pass
// through, RemoteAddr().String() is the inner connection's, NetConn() unwraps,
// and SyscallConn() exists exactly when the inner connection has it (see
// trackedTCPConn and trackedSyscallConn), which keeps go-redis's idle
// health check on.
type trackedConn struct {
	net.Conn
	addr     trackedAddr // addr.rec is the connection's record
	slot     uint16      // from slots, for the connection's life
	released atomic.Bool // Close gave the slot back
}

// trackedAddr is the RemoteAddr of a trackedConn: the inner address, plus the
// record of the connection it belongs to.
type trackedAddr struct {
	net.Addr
	rec *connRecord
}

// trackedSyscallConn is a trackedConn over a connection other than TCP that
// implements syscall.Conn (a Unix socket).
type trackedSyscallConn struct {
	trackedConn
	sc syscall.Conn
}

// SyscallConn returns the inner connection's raw connection.
func (c *trackedSyscallConn) SyscallConn() (syscall.RawConn, error) { return c.sc.SyscallConn() }

// trackedTCPConn wraps a TCP connection, the common case. It embeds the
// *net.TCPConn, so that the methods it does not change are the inner
// connection's own: go-redis calls three of them per command (the
// deadlines) and a fourth at each checkout (SyscallConn, for its health
// check), and a method promoted from an embedded pointer costs no call of
// its own. Its Read, Write, Close, RemoteAddr and NetConn do what
// trackedConn's do (Read and Write calling the connection directly), and
// ReadFrom and WriteTo, which would bypass them, go through them.
type trackedTCPConn struct {
	*net.TCPConn
	tc trackedConn // tc.Conn is the same connection; the record points to tc
	// slowWrites counts the writes that did not take Write's short cut:
	// written by the holder only, read by TestWriteShortCut (it fits in the
	// 64-byte size class the struct takes anyway).
	slowWrites uint32
}

// RemoteAddr is trackedConn.RemoteAddr.
func (c *trackedTCPConn) RemoteAddr() net.Addr { return c.tc.RemoteAddr() }

// NetConn returns the wrapped connection.
func (c *trackedTCPConn) NetConn() net.Conn { return c.TCPConn }

// Close is trackedConn.Close.
func (c *trackedTCPConn) Close() error { return c.tc.Close() }

// Write writes to the TCP connection, noting a blocking command. It does
// not call it from the slot's line, as Read does: a command blocks in Read
// (the reply it waits for) in all but the rarest cases (a full socket send
// buffer), and Write skips the switch on the slot; a goroutine stuck in
// Write gets no site.
//
// Its common case, one plain command with nothing pending, is scanQuick
// written out here: a call to it would make Write keep b and its receiver on
// the stack across the call (about a third of Write's cost per command).
// TestWriteShortCut checks that the two agree.
func (c *trackedTCPConn) Write(b []byte) (int, error) {
	r, s := c.tc.addr.rec, c.tc.addr.rec.req
	if s != nil && (s.st != wsCmd || s.cont) {
		goto slow // a batch continues, or replies are pending
	}
	if r.blockDeadline.Load() != 0 || len(b) < 10 {
		goto slow
	}
	{
		// scanQuick(b) == len(b), written out (see scanQuick for the why)
		w := binary.LittleEndian.Uint64(b)
		n := uint(byte(w>>8) - '1')  // arguments after the name
		l := uint(byte(w>>40) - '0') // the name's length
		if w&quickHeaderMask != quickHeader || n >= 9 || l >= 10 {
			goto slow
		}
		if c0 := uint(b[8]|0x20) - 'a'; l >= 4 && c0 < 32 && quickNames>>c0&1 != 0 {
			goto slow
		}
		base := unsafe.Pointer(unsafe.SliceData(b))
		i := 8 + l + 2
		for ; n > 0; n-- {
			if i+5 > uint(len(b)) {
				goto slow
			}
			d1, d2 := *(*byte)(unsafe.Add(base, i+1)), *(*byte)(unsafe.Add(base, i+2))
			if d2 == '\r' {
				i += 4 + uint(d1-'0') + 2
			} else if *(*byte)(unsafe.Add(base, i+3)) == '\r' {
				i += 5 + uint(d1-'0')*10 + uint(d2-'0') + 2
			} else {
				goto slow
			}
		}
		if i != uint(len(b)) {
			goto slow
		}
		if s != nil {
			s.oneCommand()
		}
		return c.TCPConn.Write(b)
	}
slow:
	c.slowWrites++
	r.noteWrites(b)
	return c.TCPConn.Write(b)
}

// ReadFrom copies from r through Write.
func (c *trackedTCPConn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{c}, r)
}

// WriteTo copies to w through Read.
func (c *trackedTCPConn) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c})
}

func wrapConn(inner net.Conn, rec *connRecord) net.Conn {
	if tcp, ok := inner.(*net.TCPConn); ok {
		w := &trackedTCPConn{TCPConn: tcp}
		w.tc.init(inner, rec)
		return w
	}
	if sc, ok := inner.(syscall.Conn); ok {
		w := &trackedSyscallConn{sc: sc} // one allocation for both
		w.init(inner, rec)
		return w
	}
	w := &trackedConn{}
	w.init(inner, rec)
	return w
}

func (c *trackedConn) init(inner net.Conn, rec *connRecord) {
	c.Conn = inner
	c.slot = slots.take()
	c.addr = trackedAddr{Addr: inner.RemoteAddr(), rec: rec}
	rec.conn = c
}

// RemoteAddr returns the inner connection's address, wrapped so that the
// tracker can tell which connection it belongs to. Its String() is the
// inner address's.
func (c *trackedConn) RemoteAddr() net.Addr {
	if c.addr.Addr == nil {
		return nil
	}
	return &c.addr
}

// String returns the inner address.
func (a *trackedAddr) String() string { return a.Addr.String() }

// Network returns the inner address's network.
func (a *trackedAddr) Network() string { return a.Addr.Network() }

// NetConn returns the wrapped connection (client-side caching unwraps it).
func (c *trackedConn) NetConn() net.Conn { return c.Conn }

// Read is generated, with a line of its own for each slot to call the inner
// connection from: see trampolines.go.

// Write writes to the inner connection, noting a blocking command (see
// trackedTCPConn.Write, which has a short cut for the common case).
func (c *trackedConn) Write(b []byte) (int, error) {
	c.addr.rec.noteWrites(b)
	return c.Conn.Write(b)
}

// Close closes the inner connection and ends its record: a hold running on
// it ends now. The slot is given back on the first Close.
func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	if c.released.CompareAndSwap(false, true) {
		slots.give(c.slot)
	}
	c.addr.rec.tr.dropRecord(c.addr.rec, nil)
	return err
}

// Slots. Every live wrapped connection has a slot number of slotBits bits,
// which Read spells out in the stack of a goroutine blocked in it, by the
// line it calls the inner connection from. Free slots are handed out first;
// with more live connections than slots, slots are shared (round robin), and
// a shared slot names no connection: stuckSites gives no site rather than a
// wrong one.
const (
	slotBits = 12 // a line of Read per slot (trampolines.go, gen_trampolines.go)
	numSlots = 1 << slotBits
)

var slots slotTable

type slotTable struct {
	mu    sync.Mutex
	ready bool
	free  []uint16         // unused slots, longest unused first
	users [numSlots]int32  // live connections per slot
	gen   [numSlots]uint64 // times each slot was handed out
	next  int              // round robin over shared slots
}

// take hands out a slot: a free one if there is one.
func (t *slotTable) take() uint16 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.ready {
		t.ready = true
		t.free = make([]uint16, numSlots)
		for i := range t.free {
			t.free[i] = uint16(i)
		}
	}
	var s uint16
	if len(t.free) > 0 {
		// the longest unused: a goroutine still returning from the I/O
		// of the slot's last connection is long gone
		s = t.free[0]
		t.free = t.free[1:]
	} else {
		s = uint16(t.next)
		t.next = (t.next + 1) % numSlots
	}
	t.users[s]++
	t.gen[s]++
	return s
}

// give takes a slot back.
func (t *slotTable) give(s uint16) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.users[s]--
	if t.users[s] == 0 {
		t.free = append(t.free, s)
	}
}

// owner reports whether slot s has exactly one user, and how many times it
// was handed out: a slot with one user and an unchanged count belonged to
// the same connection all along.
func (t *slotTable) owner(s uint16) (gen uint64, alone bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.gen[s], t.users[s] == 1
}

// SetDeadline passes through.
func (c *trackedConn) SetDeadline(t time.Time) error { return c.Conn.SetDeadline(t) }

// SetReadDeadline passes through.
func (c *trackedConn) SetReadDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

// SetWriteDeadline passes through.
func (c *trackedConn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(t) }
