package sse

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/redisleak/redisleak/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// msg is one block of an SSE stream as a client parses it: everything up to
// a blank line.
type msg struct {
	ID, Event, Data string
	HasID, HasData  bool
	Retry           string
	Comments        []string
}

// isEvent reports whether the block is an event an app sees (heartbeats
// carrying the cursor are events of their own type, not for the app).
func (m msg) isEvent() bool { return m.HasData && m.Event != HeartbeatEvent }

// stream is an open SSE response read by a goroutine.
type stream struct {
	Resp   *http.Response
	C      chan msg // closed at the end of the body
	cancel context.CancelFunc
}

var nsCounter atomic.Int64

// testNamespace returns a namespace no other test uses.
func testNamespace(t *testing.T) string {
	return fmt.Sprintf("ssetest-%s-%d-%d", strings.ReplaceAll(t.Name(), "/", "."), time.Now().UnixNano(), nsCounter.Add(1))
}

// redisClient returns a client for a real Redis (REDIS_ADDR or private).
func redisClient(t *testing.T) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: redistest.Addr(t)})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// startManager starts a manager and an HTTP test server for it; both are
// closed when the test ends. The manager's keys are deleted.
func startManager(t *testing.T, rdb redis.UniversalClient, o Options) (*Manager, *httptest.Server) {
	t.Helper()
	if o.Namespace == "" {
		o.Namespace = testNamespace(t)
	}
	m, err := NewManager(rdb, o)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	srv := httptest.NewServer(m)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		srv.Close()
		_ = rdb.Del(context.Background(), m.stream, m.originKey).Err()
	})
	return m, srv
}

// open connects to url with the given headers and starts reading.
func open(t *testing.T, url string, header http.Header) *stream {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	return openWith(t, &http.Client{Transport: tr}, url, header)
}

// openWith is open with a given client; its idle connections are closed
// when the stream ends.
func openWith(t *testing.T, hc *http.Client, url string, header http.Header) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", url, err)
	}
	s := &stream{Resp: resp, C: make(chan msg, 100000), cancel: cancel}
	go func() {
		defer close(s.C)
		defer hc.CloseIdleConnections()
		readStream(resp.Body, s.C)
	}()
	t.Cleanup(s.Close)
	return s
}

// Close ends the stream and waits for the reader.
func (s *stream) Close() {
	s.cancel()
	_ = s.Resp.Body.Close()
	for range s.C {
	}
}

// readStream parses an SSE body into blocks.
func readStream(r io.Reader, out chan<- msg) {
	br := bufio.NewReader(r)
	var cur msg
	empty := true
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if !empty {
				out <- cur
			}
			cur, empty = msg{}, true
			continue
		}
		empty = false
		if strings.HasPrefix(line, ":") {
			cur.Comments = append(cur.Comments, strings.TrimPrefix(strings.TrimPrefix(line, ":"), " "))
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			cur.ID, cur.HasID = value, true
		case "event":
			cur.Event = value
		case "data":
			if cur.HasData {
				cur.Data += "\n"
			}
			cur.Data += value
			cur.HasData = true
		case "retry":
			cur.Retry = value
		}
	}
}

// next returns the next event (a block with data), skipping other blocks.
func (s *stream) next(t *testing.T) msg {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-s.C:
			if !ok {
				t.Fatalf("stream ended while waiting for an event")
			}
			if m.isEvent() {
				return m
			}
		case <-timeout:
			t.Fatalf("no event within 10s")
		}
	}
}

// nextBlock returns the next block of any kind.
func (s *stream) nextBlock(t *testing.T) msg {
	t.Helper()
	select {
	case m, ok := <-s.C:
		if !ok {
			t.Fatalf("stream ended while waiting for a block")
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatalf("no block within 10s")
	}
	return msg{}
}

// waitEnd waits until the stream ends and returns the blocks read meanwhile.
func (s *stream) waitEnd(t *testing.T) []msg {
	t.Helper()
	var got []msg
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-s.C:
			if !ok {
				return got
			}
			got = append(got, m)
		case <-timeout:
			t.Fatalf("stream did not end within 10s")
		}
	}
}

// ready waits for the stream's opening block (the retry hint): the client
// is registered once it arrives.
func (s *stream) ready(t *testing.T) msg {
	t.Helper()
	m := s.nextBlock(t)
	if m.Retry == "" {
		t.Fatalf("first block = %+v, want the retry hint", m)
	}
	return m
}

// publish publishes and fails the test on error.
func publish(t *testing.T, m *Manager, topic, typ, data string) string {
	t.Helper()
	id, err := m.Publish(context.Background(), topic, Event{Event: typ, Data: data})
	if err != nil {
		t.Fatalf("Publish(%q): %v", topic, err)
	}
	return id
}

// eventually is redistest.WaitFor with 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	redistest.WaitFor(t, 10*time.Second, what, cond)
}
