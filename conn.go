package redisleak

import (
	"net"
	"runtime"
	"syscall"
	"time"
	_ "unsafe" // go:linkname
)

// trackedConn wraps a net.Conn dialed through a tracked client. It exists for
// three reasons: its RemoteAddr identifies the connection to the observer
// without a map lookup, its Read/Write frames name the connection in a
// goroutine dump (so a stuck command's holder can be found), and Write notices
// blocking commands as they are sent.
//
// It changes nothing go-redis relies on: deadlines, errors and Close pass
// through, RemoteAddr().String() is the inner connection's, NetConn() unwraps,
// and SyscallConn() exists exactly when the inner connection has it (see
// trackedSyscallConn), which keeps go-redis's idle health check on.
type trackedConn struct {
	net.Conn
	rec  *connRecord
	addr trackedAddr
}

// trackedAddr is the RemoteAddr of a trackedConn: the inner address, plus the
// record of the connection it belongs to.
type trackedAddr struct {
	net.Addr
	rec *connRecord
}

// trackedSyscallConn is a trackedConn over a connection that implements
// syscall.Conn.
type trackedSyscallConn struct {
	trackedConn
	sc syscall.Conn
}

// SyscallConn returns the inner connection's raw connection.
func (c *trackedSyscallConn) SyscallConn() (syscall.RawConn, error) { return c.sc.SyscallConn() }

func wrapConn(inner net.Conn, rec *connRecord) net.Conn {
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
	c.Conn, c.rec = inner, rec
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

// Read reads from the inner connection. It is not inlined so that a
// goroutine blocked here shows the receiver in a stack dump.
//
//go:noinline
func (c *trackedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.rec.blockDeadline.Load() != 0 {
		// a reply arrived: maybe the blocking command's
		c.rec.noteRead(b[:n])
	}
	return n, err
}

// Write writes to the inner connection, noting a blocking command.
//
//go:noinline
func (c *trackedConn) Write(b []byte) (int, error) {
	c.rec.noteWrite(b)
	n, err := c.Conn.Write(b)
	// keep c live across the call so that the receiver printed in a
	// goroutine dump taken while Write blocks is accurate
	runtime.KeepAlive(c)
	return n, err
}

// Close closes the inner connection and ends its record: a hold running on
// it ends now.
func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.rec.tr.dropRecord(c.rec, nil)
	return err
}

// SetDeadline passes through.
func (c *trackedConn) SetDeadline(t time.Time) error { return c.Conn.SetDeadline(t) }

// SetReadDeadline passes through.
func (c *trackedConn) SetReadDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

// SetWriteDeadline passes through.
func (c *trackedConn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(t) }

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
