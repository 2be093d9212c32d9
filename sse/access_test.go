package sse

import (
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"testing"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/holdtest"
)

// TestAuthorize: Authorize refuses with its status, narrows topics, and
// sees a context without the long-lived mark.
func TestAuthorize(t *testing.T) {
	// A client of its own, instrumented, on which Authorize takes a
	// connection with its context: the tracker shows the marks it carries.
	probe := redisClient(t)
	tr, err := redisleak.Instrument(probe, redisleak.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() }) // after the manager's
	var mu sync.Mutex
	var probeErrs []error
	var marked []redisleak.Leak
	m, srv := startManager(t, redisClient(t), Options{
		Authorize: func(r *http.Request, topics []string) ([]string, error) {
			h, err := holdtest.HoldWith(r.Context(), probe, tr)
			mu.Lock()
			if err != nil {
				probeErrs = append(probeErrs, err)
			} else if h.LongLivedBy == redisleak.LongLivedMark {
				marked = append(marked, h)
			}
			mu.Unlock()
			switch r.URL.Query().Get("user") {
			case "":
				return nil, &HTTPError{Status: http.StatusUnauthorized, Message: "log in"}
			case "banned":
				return nil, &HTTPError{Status: http.StatusNoContent}
			case "broken":
				return nil, errors.New("database down")
			case "nobody":
				return []string{"secret"}, nil // not requested: ignored
			}
			var out []string
			for _, t := range topics {
				if t != "secret" {
					out = append(out, t)
				}
			}
			return out, nil
		},
	})
	for _, tt := range []struct {
		query  string
		status int
	}{
		{"?topic=a", 401},
		{"?topic=a&user=banned", 204},
		{"?topic=a&user=broken", 403},
		{"?topic=a&user=nobody", 403},
		{"?topic=secret&user=ann", 403},
	} {
		resp, err := http.Get(srv.URL + tt.query)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.status {
			t.Errorf("%s: status %d, want %d", tt.query, resp.StatusCode, tt.status)
		}
	}
	http.DefaultClient.CloseIdleConnections()
	s := open(t, srv.URL+"?topic=secret&topic=a&user=ann", nil)
	s.ready(t)
	publish(t, m, "secret", "", "hidden")
	id := publish(t, m, "a", "", "visible")
	if e := s.next(t); e.ID != id {
		t.Fatalf("narrowed stream got %+v, want only %s", e, id)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(probeErrs) != 0 {
		t.Fatalf("taking a connection with Authorize's context: %v", probeErrs)
	}
	if len(marked) != 0 {
		t.Fatalf("Authorize saw a long-lived context: its holds %v", marked)
	}
	if st := m.Stats(); st.Rejected != 5 {
		t.Fatalf("rejected %d", st.Rejected)
	}
}

// TestCORS: allowed origins are echoed and preflights answered; others get
// no CORS headers.
func TestCORS(t *testing.T) {
	_, srv := startManager(t, redisClient(t), Options{AllowedOrigins: []string{"https://app.example"}, AllowCredentials: true})
	s := open(t, srv.URL+"?topic=a", http.Header{"Origin": {"https://app.example"}})
	if h := s.Resp.Header; h.Get("Access-Control-Allow-Origin") != "https://app.example" || h.Get("Access-Control-Allow-Credentials") != "true" {
		t.Fatalf("headers %v", h)
	}
	s.Close()
	s = open(t, srv.URL+"?topic=a", http.Header{"Origin": {"https://evil.example"}})
	if h := s.Resp.Header; h.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("foreign origin allowed: %v", h)
	}
	s.Close()
	req, _ := http.NewRequest(http.MethodOptions, srv.URL+"?topic=a", nil)
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Method", "GET")
	req.Header.Set("Access-Control-Request-Headers", "last-event-id")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Headers") == "" || resp.Header.Get("Access-Control-Allow-Methods") != "GET" {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
}

// TestLimits: connections over the global or per-address limit get a
// retry hint and a closing comment (status 200, so browsers retry later).
func TestLimits(t *testing.T) {
	for _, tt := range []struct {
		name string
		o    Options
		why  string
	}{
		{"global", Options{MaxClients: 2}, "closing: too many connections"},
		{"per address", Options{MaxClientsPerAddr: 2}, "closing: too many connections from this address"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, srv := startManager(t, redisClient(t), tt.o)
			a := open(t, srv.URL+"?topic=a", nil)
			a.ready(t)
			b := open(t, srv.URL+"?topic=a", nil)
			b.ready(t)
			c := open(t, srv.URL+"?topic=a", nil)
			blocks := c.waitEnd(t)
			if c.Resp.StatusCode != 200 || len(blocks) != 1 || blocks[0].Retry == "" || len(blocks[0].Comments) != 1 || blocks[0].Comments[0] != tt.why {
				t.Fatalf("over the limit: %d %+v", c.Resp.StatusCode, blocks)
			}
			// Room again once one leaves.
			a.Close()
			eventually(t, "a slot to free", func() bool { return m.Stats().Clients == 1 })
			d := open(t, srv.URL+"?topic=a", nil)
			d.ready(t)
			id := publish(t, m, "a", "", "x")
			for _, s := range []*stream{b, d} {
				if e := s.next(t); e.ID != id {
					t.Fatalf("got %+v", e)
				}
			}
			if st := m.Stats(); st.Rejected != 1 || st.Clients != 2 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// TestOnError: OnError receives the errors the manager reports.
func TestOnError(t *testing.T) {
	got := make(chan error, 1)
	m, _ := startManager(t, redisClient(t), Options{OnError: func(err error) {
		select {
		case got <- err:
		default:
		}
	}})
	boom := errors.New("boom")
	m.report(boom)
	if err := <-got; err != boom {
		t.Fatalf("OnError got %v, want %v", err, boom)
	}
}
