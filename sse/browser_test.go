package sse

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redisleak/redisleak/internal/redistest"
)

// browserPage subscribes with EventSource and reports every callback to
// /report.
const browserPage = `<!doctype html>
<html><body><script>
function report(o) {
  fetch('/report', {method: 'POST', body: JSON.stringify(o), keepalive: true});
}
// Reports may arrive out of order: each carries everything received so far.
const seen = [];
const es = new EventSource('/events?topic=b');
es.onopen = () => report({kind: 'open'});
es.onerror = () => report({kind: 'error', state: es.readyState});
es.onmessage = (e) => { seen.push(e.lastEventId + ' ' + e.data); report({kind: 'message', seen: seen}); };
es.addEventListener('reset', (e) => { seen.push('reset ' + e.lastEventId + ' ' + e.data); report({kind: 'message', seen: seen}); });
</script></body></html>`

type browserReport struct {
	Kind  string
	Seen  []string
	State int
}

// sniffWriter passes writes through and signals when one contains want.
type sniffWriter struct {
	http.ResponseWriter
	want []byte
	once sync.Once
	seen chan struct{}
}

func (s *sniffWriter) Write(p []byte) (int, error) {
	n, err := s.ResponseWriter.Write(p)
	if s.want != nil && bytes.Contains(p, s.want) {
		s.once.Do(func() { close(s.seen) })
	}
	return n, err
}

func (s *sniffWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// TestBrowser: headless Chromium's EventSource receives live events; after
// the server drops the stream it reconnects with Last-Event-ID and replays
// what was published meanwhile, exactly once; a heartbeat moves its cursor
// past events of other topics.
func TestBrowser(t *testing.T) {
	bin := redistest.Chromium(t)
	rdb := redisClient(t)
	m, err := NewManager(rdb, Options{Namespace: testNamespace(t), Retry: 100 * time.Millisecond, Heartbeat: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}

	reports := make(chan browserReport, 1000)
	type conn struct {
		lastEventID string
		cancel      context.CancelFunc
		sniff       *sniffWriter
	}
	conns := make(chan conn, 10)
	var mu sync.Mutex
	var hold chan struct{} // when set, the next stream waits for it
	var sniffFor []byte    // when set, the next stream signals this write
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte(browserPage))
	})
	mux.HandleFunc("POST /report", func(w http.ResponseWriter, r *http.Request) {
		var rep browserReport
		if err := json.NewDecoder(r.Body).Decode(&rep); err == nil {
			reports <- rep
		}
	})
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		mu.Lock()
		h, sw := hold, &sniffWriter{ResponseWriter: w, want: sniffFor, seen: make(chan struct{})}
		hold, sniffFor = nil, nil
		mu.Unlock()
		conns <- conn{r.Header.Get("Last-Event-ID"), cancel, sw}
		if h != nil {
			select {
			case <-h:
			case <-ctx.Done():
				return
			}
		}
		m.ServeHTTP(sw, r.WithContext(ctx))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Error(err)
		}
	}()

	var stderr bytes.Buffer
	cmd := exec.Command(bin, append(redistest.ChromiumFlags, "--user-data-dir="+t.TempDir(), srv.URL+"/")...)
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		redistest.Unavailable(t, "cannot start chromium: "+err.Error())
	}
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("chromium stderr:\n%s", stderr.String())
		}
	}()

	// received waits until the page reports n messages and returns what
	// it received by then.
	var longest []string
	received := func(n int) []string {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for len(longest) < n {
			select {
			case r := <-reports:
				if r.Kind == "message" && len(r.Seen) > len(longest) {
					longest = r.Seen
				}
			case <-timeout:
				t.Fatalf("browser: %d messages within 30s, want %d: %q", len(longest), n, longest)
			}
		}
		return longest
	}
	var want []string
	expect := func() {
		t.Helper()
		got := received(len(want))
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("browser received %q, want %q", got, want)
		}
	}
	nextConn := func() conn {
		t.Helper()
		select {
		case c := <-conns:
			return c
		case <-time.After(30 * time.Second):
			t.Fatal("browser did not connect within 30s")
		}
		return conn{}
	}

	// Live.
	first := nextConn()
	if first.lastEventID != "" {
		t.Fatalf("first connection sent Last-Event-ID %q", first.lastEventID)
	}
	var ids []string
	for _, d := range []string{"e1", "e2"} {
		ids = append(ids, publish(t, m, "b", "", d))
		want = append(want, ids[len(ids)-1]+" "+d)
		expect()
	}

	// Drop the stream; publish while the browser is away; let it back.
	release := make(chan struct{})
	mu.Lock()
	hold = release
	mu.Unlock()
	first.cancel()
	second := nextConn()
	if second.lastEventID != ids[1] {
		t.Fatalf("reconnection sent Last-Event-ID %q, want %q", second.lastEventID, ids[1])
	}
	for _, d := range []string{"e3", "e4"} {
		ids = append(ids, publish(t, m, "b", "", d))
		want = append(want, ids[len(ids)-1]+" "+d)
	}
	close(release)
	expect()
	ids = append(ids, publish(t, m, "b", "", "e5"))
	want = append(want, ids[4]+" e5")
	expect()

	// An event of another topic, published while the browser is away (so
	// that no heartbeat of the old stream carries it): a heartbeat of the
	// new stream carries its id to the browser, whose next reconnection
	// starts from there.
	release = make(chan struct{})
	mu.Lock()
	hold = release
	mu.Unlock()
	second.cancel()
	third := nextConn()
	if third.lastEventID != ids[4] {
		t.Fatalf("second reconnection sent %q, want %q", third.lastEventID, ids[4])
	}
	otherID := publish(t, m, "other", "", "not for the page")
	third.sniff.want = []byte("id: " + otherID + "\n")
	close(release)
	select {
	case <-third.sniff.seen:
	case <-time.After(10 * time.Second):
		t.Fatal("no heartbeat carried the other topic's id")
	}
	third.cancel()
	if fourth := nextConn(); fourth.lastEventID != otherID {
		t.Fatalf("after the heartbeat the browser resumed from %q, want %q", fourth.lastEventID, otherID)
	}
	final := publish(t, m, "b", "", "e6")
	want = append(want, final+" e6")
	// Exactly these, in order: nothing lost, nothing twice, no reset.
	expect()
}
