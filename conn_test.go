package redisleak

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

type plainConn struct{ net.Conn }

func TestWrapperKeepsBehaviour(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			buf := make([]byte, 4)
			n, _ := c.Read(buf)
			c.Write(buf[:n])
		}
	}()
	inner, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tr := &Tracker{}
	tr.opts.BlockingGrace = DefaultBlockingGrace
	w := wrapConn(inner, &connRecord{tr: tr})
	defer w.Close()
	// syscall.Conn is kept: go-redis's idle health check needs it.
	if _, ok := w.(syscall.Conn); !ok {
		t.Fatal("wrapper of a TCP conn lost syscall.Conn")
	}
	if w.RemoteAddr().String() != inner.RemoteAddr().String() || w.RemoteAddr().Network() != "tcp" {
		t.Fatalf("RemoteAddr %v != %v", w.RemoteAddr(), inner.RemoteAddr())
	}
	if w.(interface{ NetConn() net.Conn }).NetConn() != inner {
		t.Fatal("NetConn does not unwrap")
	}
	if _, err := w.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if n, err := w.Read(buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("read %q %v", buf[:n], err)
	}
	// A TCP connection gets the TCP wrapper: its own deadlines, and its
	// ReadFrom and WriteTo, which would bypass recognition, go through
	// Write and Read.
	tw, ok := w.(*trackedTCPConn)
	if !ok {
		t.Fatalf("a TCP connection wrapped in %T", w)
	}
	if err := w.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if tw.tc.addr.rec.conn != &tw.tc || tw.tc.Conn != inner {
		t.Fatal("the record does not point to the wrapper's connection")
	}
	blpop := "*3\r\n$5\r\nBLPOP\r\n$1\r\nk\r\n$1\r\n0\r\n"
	if n, err := tw.ReadFrom(strings.NewReader(blpop)); err != nil || n != int64(len(blpop)) {
		t.Fatalf("ReadFrom: %d %v", n, err)
	}
	if tw.tc.addr.rec.blockDeadline.Load() == 0 {
		t.Fatal("a blocking command written through ReadFrom was not noticed")
	}
	// A connection without syscall.Conn is not given one.
	w2 := wrapConn(plainConn{inner}, &connRecord{tr: tr})
	if _, ok := w2.(syscall.Conn); ok {
		t.Fatal("wrapper invented syscall.Conn")
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var rec holdRecorder
	for i := int64(1); i <= 1000; i++ {
		rec.push(kCommand, i*1000)
	}
	h := rec.snapshot(kCommand)
	p50, p99 := h.quantile(0.5), h.quantile(0.99)
	if p50 < 450_000 || p50 > 600_000 || p99 < 900_000 || p99 > 1_000_000 {
		t.Fatalf("p50 %d p99 %d", p50, p99)
	}
	if h.max != 1_000_000 || h.count != 1000 {
		t.Fatal(h.max, h.count)
	}
}
