package redisleak

import (
	"net"
	"testing"
)

// nopConn reads and writes nothing, at once.
type nopConn struct{ net.Conn }

func (nopConn) Read(p []byte) (int, error)  { return len(p), nil }
func (nopConn) Write(p []byte) (int, error) { return len(p), nil }
func (nopConn) RemoteAddr() net.Addr        { return &net.TCPAddr{} }

// BenchmarkTrackedConnIO measures the wrapper's own cost per Read and Write
// (one of each per op, as for a GET): inner is the bare connection, tracked
// the wrapper around it.
func BenchmarkTrackedConnIO(b *testing.B) {
	tr := &Tracker{}
	tr.opts.BlockingGrace = DefaultBlockingGrace
	cmd := []byte("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
	reply := make([]byte, 4096)
	for _, v := range []struct {
		name string
		c    net.Conn
	}{{"inner", nopConn{}}, {"tracked", wrapConn(nopConn{}, &connRecord{tr: tr})}} {
		b.Run("conn="+v.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = v.c.Write(cmd)
				_, _ = v.c.Read(reply)
			}
		})
	}
}
