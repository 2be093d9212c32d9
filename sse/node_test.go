package sse

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redisleak/redisleak/internal/redistest"
)

// nodeReport is one line printed by nodeclient/client.mjs.
type nodeReport struct {
	Kind, ID, Data, Type, Message string
	State                         int
}

// nodeClient is a Node process running one EventSource of the `eventsource`
// npm package (pinned in nodeclient/package-lock.json).
type nodeClient struct {
	Reports chan nodeReport // closed when the process's stdout ends
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	stderr  bytes.Buffer
}

// startNodeClient starts nodeclient/client.mjs on url; it is stopped when
// the test ends. Without node or the installed package (npm ci in
// sse/nodeclient) the test is skipped, or fails under
// REDISLEAK_REQUIRE_REDIS=1.
func startNodeClient(t *testing.T, url string) *nodeClient {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		redistest.Unavailable(t, "node not installed")
	}
	dir, err := filepath.Abs("nodeclient")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "eventsource", "package.json")); err != nil {
		redistest.Unavailable(t, "the eventsource package is not installed (cd sse/nodeclient && npm ci)")
	}
	c := &nodeClient{Reports: make(chan nodeReport, 10000)}
	c.cmd = exec.Command(node, "client.mjs", url)
	c.cmd.Dir = dir
	c.cmd.Stderr = &c.stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("starting node: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(c.Reports)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var r nodeReport
			if json.Unmarshal(sc.Bytes(), &r) == nil {
				c.Reports <- r
			}
		}
	}()
	t.Cleanup(func() {
		_ = c.stdin.Close()
		timer := time.AfterFunc(5*time.Second, func() { _ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL) })
		<-done
		_ = c.cmd.Wait()
		timer.Stop()
		if t.Failed() && c.stderr.Len() > 0 {
			t.Logf("node stderr:\n%s", c.stderr.String())
		}
	})
	return c
}

// streamConn is one stream request seen by a gatedEvents handler.
type streamConn struct {
	lastEventID string
	cancel      context.CancelFunc
	sniff       *sniffWriter
}

// gatedEvents serves a manager's streams and lets a test see every
// connection (its Last-Event-ID), end it, hold the next one back, and watch
// the next one for a given write.
type gatedEvents struct {
	m     *Manager
	conns chan streamConn

	mu       sync.Mutex
	hold     chan struct{} // when set, the next stream waits for it
	sniffFor []byte        // when set, the next stream signals this write
}

func newGatedEvents(m *Manager) *gatedEvents {
	return &gatedEvents{m: m, conns: make(chan streamConn, 100)}
}

func (g *gatedEvents) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	g.mu.Lock()
	h, sw := g.hold, &sniffWriter{ResponseWriter: w, want: g.sniffFor, seen: make(chan struct{})}
	g.hold, g.sniffFor = nil, nil
	g.mu.Unlock()
	g.conns <- streamConn{r.Header.Get("Last-Event-ID"), cancel, sw}
	if h != nil {
		select {
		case <-h:
		case <-ctx.Done():
			return
		}
	}
	g.m.ServeHTTP(sw, r.WithContext(ctx))
}

func (g *gatedEvents) next(t *testing.T) streamConn {
	t.Helper()
	select {
	case c := <-g.conns:
		return c
	case <-time.After(30 * time.Second):
		t.Fatal("the client did not connect within 30s")
	}
	return streamConn{}
}

// TestNodeEventSource: Node's `eventsource` package receives live events;
// after the server drops the stream it reconnects with Last-Event-ID and
// replays exactly; a heartbeat moves its cursor past events of other topics
// (its parser ignores an id in a block without data, so the heartbeat must
// be a dispatched event of its own type), and onmessage never sees a
// heartbeat.
func TestNodeEventSource(t *testing.T) {
	rdb := redisClient(t)
	m, _ := startManager(t, rdb, Options{Retry: 100 * time.Millisecond, Heartbeat: 100 * time.Millisecond})
	g := newGatedEvents(m)
	srv := httptest.NewServer(g)
	t.Cleanup(srv.Close) // after the client has gone
	nc := startNodeClient(t, srv.URL+"/events?topic=n")

	var got, want, heartbeats []string
	// read handles one report; it reports false at the end of the process.
	read := func(r nodeReport, ok bool) bool {
		if !ok {
			return false
		}
		switch r.Kind {
		case "message":
			got = append(got, r.ID+" "+r.Type+" "+r.Data)
		case "reset":
			got = append(got, "reset "+r.ID+" "+r.Data)
		case "heartbeat":
			heartbeats = append(heartbeats, r.ID)
		}
		return true
	}
	expect := func() {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for len(got) < len(want) {
			select {
			case r, ok := <-nc.Reports:
				if !read(r, ok) {
					t.Fatalf("node exited; received %q, want %q", got, want)
				}
			case <-timeout:
				t.Fatalf("node: %q within 30s, want %q", got, want)
			}
		}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("node received %q, want %q", got, want)
		}
	}
	pub := func(data string) string {
		id := publish(t, m, "n", "", data)
		want = append(want, id+" message "+data)
		return id
	}

	first := g.next(t)
	if first.lastEventID != "" {
		t.Fatalf("first connection sent Last-Event-ID %q", first.lastEventID)
	}
	pub("e1")
	e2 := pub("e2")
	expect()

	// Drop the stream; publish while the client is away; let it back.
	release := make(chan struct{})
	g.mu.Lock()
	g.hold = release
	g.mu.Unlock()
	first.cancel()
	second := g.next(t)
	if second.lastEventID != e2 {
		t.Fatalf("reconnection sent Last-Event-ID %q, want %q", second.lastEventID, e2)
	}
	pub("e3")
	e4 := pub("e4")
	close(release)
	expect()

	// An event of another topic, published while the client is away (so
	// that no heartbeat of the old stream carries it); wait on the new
	// stream for a heartbeat that carries its id, then drop that stream.
	release = make(chan struct{})
	g.mu.Lock()
	g.hold = release
	g.mu.Unlock()
	second.cancel()
	third := g.next(t)
	if third.lastEventID != e4 {
		t.Fatalf("second reconnection sent %q, want %q", third.lastEventID, e4)
	}
	otherID := publish(t, m, "other", "", "not for this client")
	third.sniff.want = []byte("id: " + otherID + "\n")
	close(release)
	select {
	case <-third.sniff.seen:
	case <-time.After(10 * time.Second):
		t.Fatal("no heartbeat carried the other topic's id")
	}
	// Let the client parse the heartbeat before the stream ends (when it
	// is an event of its own; else give it a moment and let the cursor
	// check below tell).
	timeout := time.After(20 * time.Second)
wait:
	for {
		select {
		case r, ok := <-nc.Reports:
			if !read(r, ok) {
				t.Fatal("node exited")
			}
			if len(heartbeats) > 0 && heartbeats[len(heartbeats)-1] == otherID {
				break wait
			}
		case <-timeout:
			t.Logf("no heartbeat event with id %s reached the client's listener", otherID)
			break wait
		}
	}
	third.cancel()
	if fourth := g.next(t); fourth.lastEventID != otherID {
		t.Fatalf("after the heartbeat the client resumed from %q, want %q (the heartbeat did not move its cursor)", fourth.lastEventID, otherID)
	}
	pub("e6")
	// Exactly these, in order: nothing lost, nothing twice, no reset, no
	// heartbeat in onmessage.
	expect()
}
