package sse

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redisleak/redisleak/internal/redistest"
)

// resumer is a client that behaves like a browser's EventSource: it keeps a
// cursor (the id of every block that has one, events and heartbeats alike),
// and when its stream ends it reconnects with Last-Event-ID after retry. It
// records the events it receives (resets apart; heartbeats are not events).
type resumer struct {
	url   string
	retry time.Duration

	mu       sync.Mutex
	cursor   string
	events   []msg
	resets   []msg
	conns    int
	statuses []int         // non-200 answers
	gate     chan struct{} // when not nil, no reconnection until it is closed
	cut      context.CancelFunc

	cancel context.CancelFunc
	done   chan struct{}
}

func startResumer(t *testing.T, url string, retry time.Duration) *resumer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &resumer{url: url, retry: retry, cancel: cancel, done: make(chan struct{})}
	go r.run(ctx)
	t.Cleanup(r.stop)
	return r
}

func (r *resumer) stop() {
	r.cancel()
	<-r.done
}

// away ends the current stream and keeps the client from reconnecting until
// back is called.
func (r *resumer) away() {
	r.mu.Lock()
	r.gate = make(chan struct{})
	cut := r.cut
	r.mu.Unlock()
	if cut != nil {
		cut()
	}
}

func (r *resumer) back() {
	r.mu.Lock()
	if r.gate != nil {
		close(r.gate)
		r.gate = nil
	}
	r.mu.Unlock()
}

func (r *resumer) run(ctx context.Context) {
	defer close(r.done)
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for ctx.Err() == nil {
		r.mu.Lock()
		gate := r.gate
		r.mu.Unlock()
		if gate != nil {
			select {
			case <-gate:
			case <-ctx.Done():
				return
			}
		}
		r.once(ctx, hc)
		select {
		case <-time.After(r.retry):
		case <-ctx.Done():
			return
		}
	}
}

// once runs one connection until it ends.
func (r *resumer) once(ctx context.Context, hc *http.Client) {
	cctx, cut := context.WithCancel(ctx)
	defer cut()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, r.url, nil)
	if err != nil {
		return
	}
	r.mu.Lock()
	if r.gate != nil { // away was called meanwhile
		r.mu.Unlock()
		return
	}
	r.cut = cut
	if r.cursor != "" {
		req.Header.Set("Last-Event-ID", r.cursor)
	}
	r.mu.Unlock()
	resp, err := hc.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	r.mu.Lock()
	r.conns++
	if resp.StatusCode != http.StatusOK {
		r.statuses = append(r.statuses, resp.StatusCode)
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	blocks := make(chan msg, 1024)
	go func() {
		defer close(blocks)
		readStream(resp.Body, blocks)
	}()
	defer func() {
		cut()
		for range blocks {
		}
	}()
	for b := range blocks {
		r.mu.Lock()
		if b.HasID {
			r.cursor = b.ID
		}
		switch {
		case b.Event == ResetEvent:
			r.resets = append(r.resets, b)
		case b.isEvent():
			r.events = append(r.events, b)
		}
		r.mu.Unlock()
	}
}

// snapshot returns copies of the events and resets received so far.
func (r *resumer) snapshot() (events, resets []msg) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]msg(nil), r.events...), append([]msg(nil), r.resets...)
}

// published is one event whose Publish returned nil.
type published struct{ id, data string }

// checkExactlyOnce compares what a client received with what was published
// successfully: every published event once, in order (events whose Publish
// failed may or may not be there, Redis may have run them before the
// connection broke). It returns a description of the differences, or "".
func checkExactlyOnce(got []msg, want []published) string {
	ok := make(map[string]bool, len(want))
	for _, p := range want {
		ok[p.id] = true
	}
	var problems []string
	seen := map[string]int{}
	var last streamID
	var filtered []msg
	for _, e := range got {
		seen[e.ID]++
		if id, good := parseID(e.ID); !good || !last.less(id) {
			problems = append(problems, fmt.Sprintf("event %s (%q) out of order or repeated", e.ID, e.Data))
		} else {
			last = id
		}
		if ok[e.ID] {
			filtered = append(filtered, e)
		}
	}
	missing := 0
	var firstMissing string
	for _, p := range want {
		if seen[p.id] == 0 {
			if missing == 0 {
				firstMissing = p.data
			}
			missing++
		}
	}
	if missing > 0 {
		problems = append(problems, fmt.Sprintf("%d of %d published events missing (first: %s)", missing, len(want), firstMissing))
	} else {
		for i, e := range filtered {
			if e.ID != want[i].id || e.Data != want[i].data {
				problems = append(problems, fmt.Sprintf("event %d = %s %q, want %s %q", i, e.ID, e.Data, want[i].id, want[i].data))
				break
			}
		}
	}
	if len(problems) > 3 {
		problems = append(problems[:3], fmt.Sprintf("... %d more", len(problems)-3))
	}
	return strings.Join(problems, "; ")
}

// TestRedisRestartLosingData: Redis restarts without persistence (its data
// set, the history included, is lost) for 1 s while 1,000 events are
// published at 100/s through two managers. Every event whose Publish
// returned nil reaches every client exactly once, in order: clients that
// stayed connected, and a client that was away during the outage and comes
// back with a cursor from before it (it cannot get the events it missed
// before the restart: they were lost with the history), headless
// Chromium's EventSource and Node's eventsource package. Each client gets at most one reset,
// which says the history was lost.
func TestRedisRestartLosingData(t *testing.T) {
	srv := redistest.Private(t)
	ns := testNamespace(t)
	o := Options{Namespace: ns, Heartbeat: 250 * time.Millisecond}
	mA, httpA := startManager(t, srv.Client(), o)
	mB, httpB := startManager(t, srv.Client(), o)

	const retry = 100 * time.Millisecond
	var clients []*resumer
	for i := 0; i < 4; i++ {
		base := httpA.URL
		if i%2 == 1 {
			base = httpB.URL
		}
		clients = append(clients, startResumer(t, base+"?topic=r", retry))
	}
	// Two topics on one connection, each published on by another manager.
	clients = append(clients, startResumer(t, httpB.URL+"?topic=r&topic=s", retry))
	away := startResumer(t, httpA.URL+"?topic=r&topic=s", retry)
	clients = append(clients, away)
	// Real clients: headless Chromium on A, Node's eventsource on B.
	page := http.NewServeMux()
	browser := servePage(page)
	page.Handle("GET /events", mA)
	pageSrv := httptest.NewServer(page)
	t.Cleanup(pageSrv.Close) // after the browser has gone
	startChromium(t, pageSrv.URL+"/?topic=r")
	node := watchNode(t, httpB.URL+"?topic=r")
	redistest.WaitFor(t, 60*time.Second, "every client connected", func() bool {
		_, _, bOpens := browser.snapshot()
		_, _, nOpens := node.snapshot()
		return mA.Stats().Clients == 4 && mB.Stats().Clients == 4 && bOpens > 0 && nOpens > 0
	})

	const total = 1000
	var want, wantR, wantAway []published // all events; topic r only; the away client's
	failed := 0
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	restarted := make(chan struct{})
	for i := 0; i < total; i++ {
		<-tick.C
		switch i {
		case 290:
			away.away()
		case 300:
			// Events before this one are in the lost history.
			srv.Stop()
			go func() {
				defer close(restarted)
				time.Sleep(time.Second)
				srv.Restart()
			}()
		case 600:
			away.back()
		}
		m, topic := mA, "r"
		if i%2 == 1 {
			m = mB
		}
		if i%5 == 4 {
			topic = "s"
		}
		data := fmt.Sprintf("%s %d", topic, i)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		id, err := m.Publish(ctx, topic, Event{Data: data})
		cancel()
		if err != nil {
			failed++
			continue
		}
		want = append(want, published{id, data})
		if i < 290 || i >= 300 {
			// The away client cannot get what it missed before the
			// restart: the history holding it was lost.
			wantAway = append(wantAway, published{id, data})
		}
		if topic == "r" {
			wantR = append(wantR, published{id, data})
		}
	}
	<-restarted
	t.Logf("%d of %d publishes succeeded, %d failed during the outage", len(want), total, failed)
	if len(want) < total/2 {
		t.Fatalf("only %d publishes succeeded", len(want))
	}
	last := want[len(want)-1].id
	lastR := wantR[len(wantR)-1].id
	for i, c := range clients {
		lastWanted := lastR
		if i >= 4 {
			lastWanted = last
		}
		redistest.WaitFor(t, 30*time.Second, fmt.Sprintf("client %d to receive %s", i, lastWanted), func() bool {
			events, _ := c.snapshot()
			for _, e := range events {
				if e.ID == lastWanted {
					return true
				}
			}
			return false
		})
	}
	lastREntry := wantR[len(wantR)-1].id + " " + wantR[len(wantR)-1].data
	for _, c := range []*clientLog{browser, node} {
		redistest.WaitFor(t, 30*time.Second, "the real clients to receive "+lastR, func() bool { return c.has(lastREntry) })
	}
	// Let anything late or repeated arrive before judging.
	time.Sleep(500 * time.Millisecond)
	bad := false
	for i, c := range clients {
		events, resets := c.snapshot()
		w := wantR
		if i >= 4 {
			w = want
		}
		if c == away {
			w = wantAway
		}
		if p := checkExactlyOnce(events, w); p != "" {
			t.Errorf("client %d: %s", i, p)
			bad = true
		}
		if len(resets) > 1 {
			t.Errorf("client %d: %d resets, want at most 1: %+v", i, len(resets), resets)
			bad = true
		}
		for _, r := range resets {
			if !strings.Contains(r.Data, "history lost") {
				t.Errorf("client %d: reset %q does not say the history was lost", i, r.Data)
				bad = true
			}
		}
		c.mu.Lock()
		t.Logf("client %d: %d events, %d resets, %d connections, statuses %v", i, len(events), len(resets), c.conns, c.statuses)
		c.mu.Unlock()
	}
	for _, c := range []struct {
		name string
		log  *clientLog
	}{{"chromium", browser}, {"node", node}} {
		events, resets := c.log.msgs()
		_, errs, opens := c.log.snapshot()
		if p := checkExactlyOnce(events, wantR); p != "" {
			t.Errorf("%s: %s", c.name, p)
			bad = true
		}
		if len(resets) > 1 {
			t.Errorf("%s: %d resets, want at most 1: %+v", c.name, len(resets), resets)
			bad = true
		}
		for _, r := range resets {
			if !strings.Contains(r.Data, "history lost") {
				t.Errorf("%s: reset %q does not say the history was lost", c.name, r.Data)
				bad = true
			}
		}
		for _, s := range errs {
			if s == 2 {
				t.Errorf("%s: EventSource closed for good", c.name)
				bad = true
			}
		}
		t.Logf("%s: %d events, %d resets, %d opens", c.name, len(events), len(resets), opens)
	}
	if bad {
		t.Logf("stats A %+v", mA.Stats())
		t.Logf("stats B %+v", mB.Stats())
	}
}
