package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/redisleak/redisleak"
)

func TestRealSite(t *testing.T) {
	hookSite := "naive.go:32 main.untagHook.ProcessHook.func1"
	tests := []struct {
		name string
		leak redisleak.Leak
		want string
	}{
		{name: "no stack keeps the site", leak: redisleak.Leak{Site: "service.go:10 main.f"}, want: "service.go:10 main.f"},
		{name: "hook skipped", leak: redisleak.Leak{Site: hookSite, Stack: []string{
			"github.com/redisleak/redisleak.(*connRecord).afterOperation /x/record.go:1",
			"github.com/redis/go-redis/v9.(*baseClient).process /x/redis.go:2",
			"main.untagHook.ProcessHook.func1 /x/cmd/redisleak-demo/naive.go:32",
			"github.com/redis/go-redis/v9.(*Conn).Process /x/redis.go:3",
			"github.com/redisleak/redisleak/bullmq_compat.bzpopmin /x/bullmq_compat/blocking.go:177",
			"github.com/redisleak/redisleak/bullmq_compat.(*Worker).waitMarker /x/bullmq_compat/worker.go:267",
		}}, want: "blocking.go:177 bullmq_compat.bzpopmin"},
		{name: "hook skipped in a test binary", leak: redisleak.Leak{Site: hookSite, Stack: []string{
			"github.com/redisleak/redisleak/cmd/redisleak-demo.(*untagHook).DialHook.untagHook.DialHook.func1 /x/naive.go:26",
			"github.com/redisleak/redisleak/sse.NewManager /x/sse/manager.go:135",
		}}, want: "manager.go:135 sse.NewManager"},
		{name: "goroutine dump frames skipped", leak: redisleak.Leak{Stack: []string{
			"internal/poll.(*FD).Read /usr/local/go/src/internal/poll/fd_unix.go:165",
			"net.(*conn).Read /usr/local/go/src/net/net.go:196",
			"bufio.(*Reader).Peek /usr/local/go/src/bufio/bufio.go:152",
			"main.(*service).leakyReport /x/service.go:335",
		}}, want: "service.go:335 main.(*service).leakyReport"},
		{name: "only skipped frames keep the site", leak: redisleak.Leak{Site: "s", Stack: []string{"runtime.goexit /x/asm.s:1"}}, want: "s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := realSite(tt.leak); got != tt.want {
				t.Errorf("realSite = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSiteFixer(t *testing.T) {
	raw, real := "naive.go:32 main.untagHook.ProcessHook.func1", "blocking.go:177 bullmq_compat.bzpopmin"
	book := newSiteBook()
	book.note(redisleak.Leak{ConnID: 4, Site: raw, Stack: []string{"github.com/redisleak/redisleak/bullmq_compat.bzpopmin /x/blocking.go:177"}})
	book.note(redisleak.Leak{ConnID: 5, Site: "service.go:1 main.f"}) // nothing to fix
	var buf bytes.Buffer
	log := slog.New(siteFixer{Handler: slog.NewTextHandler(&buf, nil), book: book})
	log.Warn("leak", slog.Int("leakedCount", 2), slog.Group("leak0", slog.Uint64("connId", 4), slog.String("site", raw)),
		slog.Group("leak1", slog.Uint64("connId", 5), slog.String("site", "service.go:1 main.f")))
	log.Info("returned", slog.Uint64("connId", 4), slog.String("site", raw))
	log.Warn("still held", slog.String("longest", "redis connection 4 (blocking) acquired at "+raw))
	out := buf.String()
	if strings.Contains(out, "untagHook") {
		t.Errorf("hook site left in:\n%s", out)
	}
	for _, want := range []string{`leak0.site="` + real, `leak1.site="service.go:1 main.f"`, `msg=returned connId=4 site="` + real, "acquired at " + real} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestFixHealthSites(t *testing.T) {
	stub := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"total":3,"leaks":[{"connId":4,"site":"naive.go:32 main.untagHook.ProcessHook.func1",
			"stack":["main.untagHook.ProcessHook.func1 /x/naive.go:32","github.com/redisleak/redisleak/sse.NewManager /x/sse/manager.go:135"]},
			{"connId":5,"site":"service.go:1 main.f"}]}`))
	})
	h := fixHealthSites(stub)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/health/redis-pool", nil))
	var body struct {
		Total int
		Leaks []struct{ Site string }
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body.Total != 3 || len(body.Leaks) != 2 || body.Leaks[0].Site != "manager.go:135 sse.NewManager" || body.Leaks[1].Site != "service.go:1 main.f" {
		t.Errorf("got %+v", body)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/health/redis-pool", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", rec.Code)
	}
}
