package sse

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStalledClient: a client that stops reading never delays a fast one
// on the same topic; it is disconnected once its queue is full, and its
// handler ends within the write timeout.
func TestStalledClient(t *testing.T) {
	rdb := redisClient(t)
	// A blocking fan-out would make the fast client wait for the stalled
	// one's write timeout: 3s, beyond the 2.5s the test allows per event.
	m, err := NewManager(rdb, Options{Namespace: testNamespace(t), QueueSize: 8, WriteTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(m)
	// Small socket buffers, so the stalled client blocks its writer soon.
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if tc, ok := c.(*net.TCPConn); ok && s == http.StateNew {
			_ = tc.SetWriteBuffer(4096)
		}
	}
	srv.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Error(err)
		}
		srv.Close()
	})

	// The stalled client: sends its request, never reads.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
	}}
	stalled, err := d.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	if _, err := fmt.Fprintf(stalled, "GET /?topic=s HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	fast := open(t, srv.URL+"?topic=s", nil)
	fast.ready(t)
	eventually(t, "both clients registered", func() bool { return m.Stats().Clients == 2 })

	data := strings.Repeat("x", 16<<10)
	n := 0
	for ; m.Stats().SlowDisconnects == 0; n++ {
		if n == 2000 {
			t.Fatalf("stalled client not disconnected after %d events of 16 KiB; stats %+v", n, m.Stats())
		}
		id := publish(t, m, "s", "", data)
		start := time.Now()
		if e := fast.next(t); e.ID != id {
			t.Fatalf("fast client got %s, want %s", e.ID, id)
		}
		if d := time.Since(start); d > 2500*time.Millisecond {
			t.Fatalf("fast client waited %v for event %d", d, n)
		}
	}
	t.Logf("stalled client disconnected after %d events", n)
	// The fast client goes on; the stalled handler ends.
	id := publish(t, m, "s", "", "after")
	if e := fast.next(t); e.ID != id {
		t.Fatalf("fast client got %+v after the disconnect", e)
	}
	eventually(t, "stalled handler to end", func() bool { return m.Stats().Clients == 1 })
	// What reached the stalled client is whole events, then the end.
	_ = stalled.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(stalled)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan msg, 10000)
	readStream(resp.Body, ch)
	close(ch)
	got := 0
	for e := range ch {
		if e.HasData {
			if e.Data != data {
				t.Fatalf("stalled client got a damaged event")
			}
			got++
		}
	}
	if got >= n {
		t.Fatalf("stalled client received %d of %d events: it was not stalled", got, n)
	}
	st := m.Stats()
	if st.SlowDisconnects != 1 || st.Drops < 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestDropEventsPolicy: with DropEvents a full queue skips events for that
// client and the stream goes on.
func TestDropEventsPolicy(t *testing.T) {
	m, _ := startManager(t, redisClient(t), Options{QueueSize: 1, OnFull: DropEvents})
	c := &client{queue: make(chan *frame, 1), topics: []string{"d"}, kicked: make(chan struct{}), cancel: func() {}}
	if why := m.register(c); why != "" {
		t.Fatal(why)
	}
	defer m.unregister(c)
	// Feed the fan-out directly, as the run goroutine does, on a fresh id
	// range: nothing reads the queue.
	m2 := &Manager{opts: m.opts, topics: map[string]map[*client]struct{}{"d": {c: {}}}}
	m2.lastFanned.Store(&streamID{})
	for i := uint64(1); i <= 3; i++ {
		m2.deliver(&frame{id: streamID{ms: 1, seq: i}, topic: "d"})
	}
	if st := m2.Stats(); st.Deliveries != 1 || st.Drops != 2 || st.SlowDisconnects != 0 {
		t.Fatalf("stats %+v", st)
	}
	select {
	case <-c.kicked:
		t.Fatal("client kicked under DropEvents")
	default:
	}
}

// gatedWriter blocks writes of events while its gate is closed.
type gatedWriter struct {
	http.ResponseWriter
	gate <-chan struct{}
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	if g.gate != nil && strings.HasPrefix(string(p), "id: ") {
		<-g.gate
	}
	return g.ResponseWriter.Write(p)
}

func (g *gatedWriter) Unwrap() http.ResponseWriter { return g.ResponseWriter }

// TestSlowClientClosingComment: a client whose queue overflows while its
// connection is still writable gets at most the events it had queued, then
// the closing comment, then the end of the stream.
func TestSlowClientClosingComment(t *testing.T) {
	rdb := redisClient(t)
	m, err := NewManager(rdb, Options{Namespace: testNamespace(t), QueueSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gw := &gatedWriter{ResponseWriter: w}
		if r.URL.Query().Get("gated") != "" {
			gw.gate = gate
		}
		m.ServeHTTP(gw, r)
	}))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Error(err)
		}
		srv.Close()
	})
	s := open(t, srv.URL+"?topic=s&gated=1", nil)
	s.ready(t)
	var ids []string
	for i := 0; i < 4 && m.Stats().SlowDisconnects == 0; i++ {
		ids = append(ids, publish(t, m, "s", "", fmt.Sprint(i)))
		eventually(t, "delivery or overflow", func() bool {
			st := m.Stats()
			return st.Deliveries+st.Drops == int64(len(ids))
		})
	}
	if m.Stats().SlowDisconnects != 1 {
		t.Fatalf("no overflow: %+v", m.Stats())
	}
	close(gate)
	blocks := s.waitEnd(t)
	last := blocks[len(blocks)-1]
	if len(last.Comments) != 1 || last.Comments[0] != "closing: client too slow" || last.HasData {
		t.Fatalf("stream ended with %+v", blocks)
	}
	var got []string
	for _, b := range blocks {
		if b.HasData {
			got = append(got, b.ID)
		}
	}
	if len(got) >= len(ids) || strings.Join(got, ",") != strings.Join(ids[:len(got)], ",") {
		t.Fatalf("events before the closing comment %v, want a proper prefix of %v", got, ids)
	}
}
