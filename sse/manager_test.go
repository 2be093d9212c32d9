package sse

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestFanOutTwoManagers: an event published on either manager reaches the
// subscribers of its topic on both, with the id Publish returned, in one
// order; subscribers of other topics get nothing.
func TestFanOutTwoManagers(t *testing.T) {
	rdb := redisClient(t)
	ns := testNamespace(t)
	m1, srv1 := startManager(t, rdb, Options{Namespace: ns})
	m2, srv2 := startManager(t, rdb, Options{Namespace: ns})

	a1 := open(t, srv1.URL+"?topic=news", nil)
	a2 := open(t, srv2.URL+"?topic=news", nil)
	other := open(t, srv2.URL+"?topic=sports", nil)
	for _, s := range []*stream{a1, a2, other} {
		s.ready(t)
	}
	var ids []string
	for i := 0; i < 10; i++ {
		m := m1
		if i%2 == 1 {
			m = m2
		}
		ids = append(ids, publish(t, m, "news", "headline", fmt.Sprintf("story %d\nsecond line", i)))
	}
	last := publish(t, m1, "sports", "", "goal")
	for name, s := range map[string]*stream{"manager 1": a1, "manager 2": a2} {
		for i, id := range ids {
			e := s.next(t)
			if e.ID != id || e.Event != "headline" || e.Data != fmt.Sprintf("story %d\nsecond line", i) {
				t.Fatalf("%s: event %d = %+v, want id %s", name, i, e, id)
			}
		}
	}
	if e := other.next(t); e.ID != last || e.Data != "goal" {
		t.Fatalf("sports subscriber got %+v, want only the goal %s", e, last)
	}
	eventually(t, "manager 1 to receive all 11 events", func() bool { return m1.Stats().Received == 11 })
	if st := m1.Stats(); st.Clients != 1 || st.Published != 6 {
		t.Fatalf("manager 1 stats %+v", st)
	}
}

// TestHeadersAndPrelude checks the response headers and the opening block.
func TestHeadersAndPrelude(t *testing.T) {
	_, srv := startManager(t, redisClient(t), Options{Retry: 1500 * time.Millisecond})
	s := open(t, srv.URL+"?topic=a", nil)
	h := s.Resp.Header
	if s.Resp.StatusCode != 200 || h.Get("Content-Type") != "text/event-stream; charset=utf-8" ||
		h.Get("Cache-Control") != "no-cache" || h.Get("X-Accel-Buffering") != "no" {
		t.Fatalf("status %d headers %v", s.Resp.StatusCode, h)
	}
	if m := s.ready(t); m.Retry != "1500" {
		t.Fatalf("retry hint %q, want 1500", m.Retry)
	}
}

// TestBadRequests: bad input is an HTTP error before a stream starts, and a
// Publish error.
func TestBadRequests(t *testing.T) {
	m, srv := startManager(t, redisClient(t), Options{MaxTopics: 2})
	for _, tt := range []struct {
		method, query string
		status        int
	}{
		{"GET", "", 400},
		{"GET", "?topic=", 400},
		{"GET", "?topic=a%0Ab", 400},
		{"GET", "?topic=a&topic=b&topic=c", 400},
		{"POST", "?topic=a", 405},
	} {
		req, _ := http.NewRequest(tt.method, srv.URL+tt.query, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.status {
			t.Errorf("%s %s: status %d, want %d", tt.method, tt.query, resp.StatusCode, tt.status)
		}
	}
	http.DefaultClient.CloseIdleConnections()
	if _, err := m.Publish(context.Background(), "a", Event{ID: "1-1"}); err == nil {
		t.Error("Publish accepted an event with an ID")
	}
}

// TestReplay: a client that reconnects with its cursor, by header or by
// query, receives exactly the events of its topics published after it, on
// every topic of the connection, then live ones.
func TestReplay(t *testing.T) {
	rdb := redisClient(t)
	m, srv := startManager(t, rdb, Options{})
	for _, how := range []string{"header", "query", "header wins over stale query"} {
		t.Run(how, func(t *testing.T) {
			base := srv.URL + "?topic=a&topic=b"
			s := open(t, base, nil)
			s.ready(t)
			type pub struct{ id, topic, data string }
			var pubs []pub
			for i := 0; i < 9; i++ {
				topic := []string{"a", "b", "c"}[i%3]
				d := topic + strconv.Itoa(i)
				pubs = append(pubs, pub{publish(t, m, topic, "", d), topic, d})
			}
			// Read up to the event with data "b4", then drop the connection.
			var cursor string
			for {
				e := s.next(t)
				if e.Data == "b4" {
					cursor = e.ID
					break
				}
			}
			s.Close()
			for i := 9; i < 15; i++ {
				topic := []string{"a", "b", "c"}[i%3]
				d := topic + strconv.Itoa(i)
				pubs = append(pubs, pub{publish(t, m, topic, "", d), topic, d})
			}
			var s2 *stream
			switch how {
			case "header":
				s2 = open(t, base, http.Header{"Last-Event-Id": {cursor}})
			case "query":
				s2 = open(t, base+"&lastEventId="+cursor, nil)
			default:
				s2 = open(t, base+"&lastEventId="+pubs[0].id, http.Header{"Last-Event-Id": {cursor}})
			}
			s2.ready(t)
			live := publish(t, m, "a", "", "live")
			var want []pub
			for _, p := range pubs[5:] {
				if p.topic != "c" {
					want = append(want, p)
				}
			}
			want = append(want, pub{live, "a", "live"})
			for i, w := range want {
				e := s2.next(t)
				if e.ID != w.id || e.Data != w.data {
					t.Fatalf("event %d after resume = %+v, want %s %s", i, e, w.id, w.data)
				}
			}
		})
	}
	// 6 replayed events per resume, plus the live one when it was published
	// before the replay read the history.
	if st := m.Stats(); st.Replays != 3 || st.ReplayedEvents < 18 || st.ReplayedEvents > 21 || st.Resets != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestBadCursor: a malformed, unknown or trimmed cursor gets one "reset"
// event carrying the newest id, then live events; never an error status.
func TestBadCursor(t *testing.T) {
	rdb := redisClient(t)
	m, srv := startManager(t, rdb, Options{})
	first := publish(t, m, "a", "", "1")
	publish(t, m, "a", "", "2")
	newest := publish(t, m, "zzz", "", "3")
	// A cursor older than the retained history: trim the first entry away.
	ctx := context.Background()
	firstID, _ := parseID(first)
	trimmed := firstID.String()
	if err := rdb.XTrimMaxLen(ctx, m.stream, 2).Err(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, cursor, why string }{
		{"malformed", "not-an-id", "malformed cursor"},
		{"injection", "1-0\r\nevent: x", "malformed cursor"},
		{"unknown (future)", "99999999999999-0", "unknown cursor"},
		{"trimmed", trimmed, "cursor older than the retained history"},
		// Older than the history's origin: from a history Redis lost
		// (here the new one is trimmed past its origin as well).
		{"zero", "0-0", whyLostTrimmed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// By query: a header cannot carry CR/LF.
			s := open(t, srv.URL+"?topic=a&lastEventId="+url.QueryEscape(tt.cursor), nil)
			if s.Resp.StatusCode != 200 {
				t.Fatalf("status %d", s.Resp.StatusCode)
			}
			s.ready(t)
			e := s.next(t)
			if e.Event != "reset" || e.ID != newest || e.Data != tt.why {
				t.Fatalf("got %+v, want reset id %s data %q", e, newest, tt.why)
			}
			live := publish(t, m, "a", "", "after "+tt.name)
			if e := s.next(t); e.ID != live {
				t.Fatalf("after reset got %+v, want live %s", e, live)
			}
			newest = live
		})
	}
	if st := m.Stats(); st.Resets != 5 {
		t.Fatalf("resets %d", st.Resets)
	}
}

// TestResetOnEmptyHistory: a cursor on a namespace without history gets a
// reset whose id is a real entry, from which a later resume works.
func TestResetOnEmptyHistory(t *testing.T) {
	m, srv := startManager(t, redisClient(t), Options{})
	s := open(t, srv.URL+"?topic=a&lastEventId=5-5", nil)
	s.ready(t)
	reset := s.next(t)
	if reset.Event != "reset" {
		t.Fatalf("got %+v", reset)
	}
	s.Close()
	id := publish(t, m, "a", "", "x")
	s2 := open(t, srv.URL+"?topic=a&lastEventId="+reset.ID, nil)
	s2.ready(t)
	if e := s2.next(t); e.ID != id || e.Event != "" {
		t.Fatalf("resume from the reset id got %+v, want %s", e, id)
	}
}

// TestHeartbeat: an idle stream gets comments, and a heartbeat moves the
// browser's cursor past events of other topics.
func TestHeartbeat(t *testing.T) {
	m, srv := startManager(t, redisClient(t), Options{Heartbeat: 30 * time.Millisecond})
	s := open(t, srv.URL+"?topic=quiet", nil)
	s.ready(t)
	// The first heartbeat may move the cursor (of a client without one) to
	// the newest id of the history; then only comments.
	if b := s.nextBlock(t); b.HasID && (b.Event != HeartbeatEvent || b.isEvent()) {
		t.Fatalf("first block on an idle stream = %+v, want a heartbeat", b)
	}
	for i := 0; i < 2; i++ {
		if b := s.nextBlock(t); len(b.Comments) == 0 || b.HasData || b.HasID {
			t.Fatalf("block %d on an idle stream = %+v, want a comment", i, b)
		}
	}
	other := publish(t, m, "busy", "", "x")
	for {
		b := s.nextBlock(t)
		if b.isEvent() {
			t.Fatalf("quiet stream got an event %+v", b)
		}
		if b.HasID {
			// A dispatched event of its own type, so that clients
			// that ignore the id of a block without data take it too.
			if b.ID != other || b.Event != HeartbeatEvent || !b.HasData || b.Data != "" {
				t.Fatalf("heartbeat %+v, want id %q, event %q, empty data", b, other, HeartbeatEvent)
			}
			break
		}
	}
	// The advanced cursor resumes exactly.
	s.Close()
	id := publish(t, m, "quiet", "", "y")
	s2 := open(t, srv.URL+"?topic=quiet&lastEventId="+other, nil)
	s2.ready(t)
	if e := s2.next(t); e.ID != id {
		t.Fatalf("got %+v want %s", e, id)
	}
}

// TestHandoff: clients resume from every cursor while events are being
// published; each sees every later event of its topic exactly once, in
// order, across the replay-to-live handoff.
func TestHandoff(t *testing.T) {
	rdb := redisClient(t)
	m, srv := startManager(t, rdb, Options{})
	const total = 300
	ids := make([]string, 0, total)
	var mu sync.Mutex
	published := make(chan struct{}, total)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < total; i++ {
			topic := "h"
			if i%4 == 3 {
				topic = "other"
			}
			id, err := m.Publish(context.Background(), topic, Event{Data: strconv.Itoa(i)})
			if err != nil {
				t.Errorf("publish: %v", err)
				return
			}
			mu.Lock()
			ids = append(ids, id)
			mu.Unlock()
			published <- struct{}{}
		}
	}()
	// Connect clients at various points of the run, each from the latest
	// id known at that time.
	var wg sync.WaitGroup
	for c := 0; c < 8; c++ {
		for k := 0; k < 20; k++ {
			<-published
		}
		mu.Lock()
		start := len(ids) - 1
		cursor := ids[start]
		mu.Unlock()
		s := open(t, srv.URL+"?topic=h&lastEventId="+cursor, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Every later event with topic h, in order.
			for i := start + 1; i < total; i++ {
				if i%4 == 3 {
					continue
				}
				e := s.next(t)
				if e.Data != strconv.Itoa(i) {
					t.Errorf("client from %d: got %q, want %d", start, e.Data, i)
					return
				}
			}
		}()
	}
	<-done
	wg.Wait()
}

// TestConcurrentPublishersOneOrder: events published concurrently through
// two managers reach clients of both managers in one order, the order of
// their ids, each once; with sharded pub/sub on a standalone server too.
func TestConcurrentPublishersOneOrder(t *testing.T) {
	for _, sharded := range []bool{false, true} {
		t.Run(fmt.Sprintf("sharded=%v", sharded), func(t *testing.T) {
			rdb := redisClient(t)
			ns := testNamespace(t)
			m1, srv1 := startManager(t, rdb, Options{Namespace: ns, Sharded: sharded})
			m2, srv2 := startManager(t, rdb, Options{Namespace: ns, Sharded: sharded})
			s1 := open(t, srv1.URL+"?topic=o", nil)
			s2 := open(t, srv2.URL+"?topic=o", nil)
			s1.ready(t)
			s2.ready(t)
			const perPublisher = 100
			var wg sync.WaitGroup
			for p := 0; p < 4; p++ {
				m := []*Manager{m1, m2}[p%2]
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < perPublisher; i++ {
						if _, err := m.Publish(context.Background(), "o", Event{Data: fmt.Sprint(p, "-", i)}); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			var seq [2][]string
			for k, s := range []*stream{s1, s2} {
				var prev streamID
				for i := 0; i < 4*perPublisher; i++ {
					e := s.next(t)
					id, ok := parseID(e.ID)
					if !ok || !prev.less(id) {
						t.Fatalf("client %d: id %q after %v", k, e.ID, prev)
					}
					prev = id
					seq[k] = append(seq[k], e.ID+" "+e.Data)
				}
			}
			for i := range seq[0] {
				if seq[0][i] != seq[1][i] {
					t.Fatalf("clients diverge at %d: %q vs %q", i, seq[0][i], seq[1][i])
				}
			}
		})
	}
}

// TestTooManyParameters: Go's query parser gives up after 10,000
// parameters; such a request is told so (400), not that it has no topic.
// 10,000 parameters are still served.
func TestTooManyParameters(t *testing.T) {
	_, srv := startManager(t, redisClient(t), Options{})
	get := func(params int) (int, string) {
		t.Helper()
		q := "?topic=a" + strings.Repeat("&x=1", params-1)
		resp, err := http.Get(srv.URL + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		return resp.StatusCode, line
	}
	defer http.DefaultClient.CloseIdleConnections()
	if status, body := get(10_001); status != 400 || !strings.Contains(body, "too many parameters") {
		t.Errorf("10,001 parameters: %d %q, want 400 too many parameters", status, body)
	}
	if status, body := get(10_000); status != 200 || !strings.HasPrefix(body, "retry:") {
		t.Errorf("10,000 parameters: %d %q, want a stream", status, body)
	}
}
