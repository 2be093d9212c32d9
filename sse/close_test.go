package sse

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestShutdown: http.Server.Shutdown with Close registered on it ends every
// stream promptly; Publish then fails with ErrClosed and a late request
// gets a retry hint and an empty stream.
func TestShutdown(t *testing.T) {
	rdb := redisClient(t)
	m, err := NewManager(rdb, Options{Namespace: testNamespace(t)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m}
	srv.RegisterOnShutdown(func() { _ = m.Close(context.Background()) })
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	url := "http://" + ln.Addr().String()

	var streams []*stream
	for i := 0; i < 3; i++ {
		s := open(t, url+"?topic=x", nil)
		s.ready(t)
		streams = append(streams, s)
	}
	id := publish(t, m, "x", "", "before")
	for _, s := range streams {
		if e := s.next(t); e.ID != id {
			t.Fatalf("got %+v", e)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Shutdown took %v", d)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	for _, s := range streams {
		s.waitEnd(t)
	}
	if _, err := m.Publish(context.Background(), "x", Event{Data: "late"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if st := m.Stats(); st.Clients != 0 {
		t.Fatalf("clients after Close: %d", st.Clients)
	}

	// A request reaching a closed manager: 200, retry hint, closing comment.
	late := httptest.NewServer(m)
	defer late.Close()
	s := open(t, late.URL+"?topic=x", nil)
	blocks := s.waitEnd(t)
	if s.Resp.StatusCode != 200 || len(blocks) != 1 || blocks[0].Retry == "" || len(blocks[0].Comments) != 1 || blocks[0].HasData {
		t.Fatalf("late request: status %d blocks %+v", s.Resp.StatusCode, blocks)
	}
}

// TestCloseWithoutClients: Close with no stream returns at once, twice.
func TestCloseWithoutClients(t *testing.T) {
	m, err := NewManager(redisClient(t), Options{Namespace: testNamespace(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestHTTP2: streams work over HTTP/2 (flushes, write deadlines through
// http.ResponseController), and Close ends them.
func TestHTTP2(t *testing.T) {
	m, err := NewManager(redisClient(t), Options{Namespace: testNamespace(t)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(m)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	s := openWith(t, srv.Client(), srv.URL+"?topic=h2", nil)
	if s.Resp.ProtoMajor != 2 {
		t.Fatalf("protocol %s", s.Resp.Proto)
	}
	s.ready(t)
	id := publish(t, m, "h2", "x", "over h2")
	if e := s.next(t); e.ID != id || e.Event != "x" {
		t.Fatalf("got %+v", e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s.waitEnd(t)
}
