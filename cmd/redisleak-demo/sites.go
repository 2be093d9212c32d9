package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/redisleak/redisleak"
)

// In the naive mode (-mark-long-lived=false) untagHook sits in the call
// stack of every command, and it is the first frame outside go-redis and
// redisleak: the tracker would name it as the acquisition site of every
// companion connection. That mode turns Options.FullStacks on, and the demo
// names the first frame after the hook instead (realSite), in its own
// output and, through siteFixer, in the tracker's log lines. In the normal
// mode nothing here changes anything.

// realSite is l.Site, or, when l carries a stack, its first frame outside
// go-redis, redisleak, the runtime and untagHook.
func realSite(l redisleak.Leak) string {
	for _, f := range l.Stack {
		// "pkg.Func /path/file.go:123"
		fn, loc, ok := strings.Cut(f, " ")
		if !ok || skipFrame(fn) {
			continue
		}
		file, line, _ := strings.Cut(filepath.Base(loc), ":")
		if i := strings.LastIndexByte(fn, '/'); i >= 0 {
			fn = fn[i+1:]
		}
		if _, err := strconv.Atoi(line); err != nil {
			return l.Site
		}
		return file + ":" + line + " " + fn
	}
	return l.Site
}

func skipFrame(fn string) bool {
	// The hook's frames: "main.untagHook.ProcessHook.func1", or, in a test
	// binary, "github.com/.../redisleak-demo.(*untagHook).ProcessHook...".
	if strings.Contains(fn, ".untagHook.") || strings.Contains(fn, ".(*untagHook).") {
		return true
	}
	for _, p := range []string{
		"github.com/redis/go-redis/", "github.com/redisleak/redisleak.",
		"runtime.", "runtime/", "sync.", "context.", "internal/", "net.", "syscall.", "bufio.", "io.", "crypto/tls.",
	} {
		if strings.HasPrefix(fn, p) {
			return true
		}
	}
	return false
}

// leakString is l.String() with the real site.
func leakString(l redisleak.Leak) string {
	s := l.String()
	if rs := realSite(l); rs != l.Site && l.Site != "" {
		s = strings.Replace(s, l.Site, rs, 1)
	}
	return s
}

// siteBook maps connection ids to the tracker's site and the real one.
type siteBook struct {
	mu    sync.Mutex
	sites map[uint64][2]string // raw, real
}

func newSiteBook() *siteBook { return &siteBook{sites: map[uint64][2]string{}} }

// note records the real site of each hold whose site differs.
func (b *siteBook) note(ls ...redisleak.Leak) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range ls {
		if rs := realSite(l); rs != l.Site && l.Site != "" {
			b.sites[l.ConnID] = [2]string{l.Site, rs}
		}
	}
}

func (b *siteBook) lookup(id uint64) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.sites[id]
	return s[1], ok
}

// replaceAll replaces every raw site known in s.
func (b *siteBook) replaceAll(s string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, v := range b.sites {
		s = strings.ReplaceAll(s, v[0], v[1])
	}
	return s
}

// siteFixer is a slog.Handler that puts real sites into the tracker's log
// records: a "site" attribute next to a known "connId", and sites inside
// the "longest" text of reminders.
type siteFixer struct {
	slog.Handler
	book *siteBook
}

func (h siteFixer) Handle(ctx context.Context, r slog.Record) error {
	var attrs []slog.Attr
	r.Attrs(func(a slog.Attr) bool { attrs = append(attrs, a); return true })
	nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	nr.AddAttrs(h.fix(attrs)...)
	return h.Handler.Handle(ctx, nr)
}

func (h siteFixer) fix(attrs []slog.Attr) []slog.Attr {
	var id uint64
	hasID := false
	for _, a := range attrs {
		if a.Key == "connId" && a.Value.Kind() == slog.KindUint64 {
			id, hasID = a.Value.Uint64(), true
		}
	}
	out := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		switch {
		case a.Value.Kind() == slog.KindGroup:
			a = slog.Attr{Key: a.Key, Value: slog.GroupValue(h.fix(a.Value.Group())...)}
		case a.Key == "site" && hasID:
			if rs, ok := h.book.lookup(id); ok {
				a = slog.String("site", rs)
			}
		case a.Key == "longest" && a.Value.Kind() == slog.KindString:
			a = slog.String("longest", h.book.replaceAll(a.Value.String()))
		}
		out[i] = a
	}
	return out
}

func (h siteFixer) WithAttrs(attrs []slog.Attr) slog.Handler {
	return siteFixer{Handler: h.Handler.WithAttrs(attrs), book: h.book}
}

func (h siteFixer) WithGroup(name string) slog.Handler {
	return siteFixer{Handler: h.Handler.WithGroup(name), book: h.book}
}

// fixHealthSites puts the real sites into the tracker's health JSON (the
// naive mode only): each leak's "site" is recomputed from its "stack".
func fixHealthSites(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		var body map[string]any
		if rec.Code != http.StatusOK || r.Method != http.MethodGet || json.Unmarshal(rec.Body.Bytes(), &body) != nil {
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
			return
		}
		leaks, _ := body["leaks"].([]any)
		for _, x := range leaks {
			m, ok := x.(map[string]any)
			if !ok {
				continue
			}
			l := redisleak.Leak{}
			l.Site, _ = m["site"].(string)
			frames, _ := m["stack"].([]any)
			for _, f := range frames {
				if s, ok := f.(string); ok {
					l.Stack = append(l.Stack, s)
				}
			}
			m["site"] = realSite(l)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(body)
	})
}
