package main

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"sync"
	"time"

	"github.com/redisleak/redisleak/sse"
)

//go:embed web
var webFS embed.FS

var dashboardPage = template.Must(template.ParseFS(webFS, "web/index.html"))

// staticHandler serves the page's script and style from the binary.
func staticHandler() http.Handler {
	sub, err := fs.Sub(webFS, "web")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	return http.StripPrefix("/static/", http.FileServerFS(sub))
}

// sample is one stats event: what the dashboard draws.
type sample struct {
	T             int64         `json:"t"` // Unix ms
	UptimeMs      int64         `json:"uptimeMs"`
	Total         int           `json:"total"`
	Idle          int           `json:"idle"`
	InUse         int           `json:"inUse"`
	LongLived     int           `json:"longLived"`
	Leaked        int           `json:"leaked"`
	LeaksReported uint64        `json:"leaksReported"`
	Leaks         []leakView    `json:"leaks"`
	Holders       []holderGroup `json:"holders"`
	Jobs          jobTotals     `json:"jobs"`
	Queue         queueView     `json:"queue"`
	SSEClients    int           `json:"sseClients"`
	Keyspace      string        `json:"keyspace"`

	// AutoDetection is -auto-long-lived; AutoLongLived is the tracker's
	// Stats.AutoLongLived and AutoHolders the holds it classified
	// long-lived by behaviour, each with the hint to mark it.
	AutoDetection bool       `json:"autoDetection"`
	AutoLongLived int        `json:"autoLongLived"`
	AutoHolders   []autoView `json:"autoHolders"`
	// Tracker is the tracker's own verdict, set in the naive mode (where
	// the fields above the chart are the naive detector's), so that the
	// page can show both side by side.
	Tracker *verdict `json:"tracker,omitempty"`
}

// verdict is a detector's counts.
type verdict struct {
	LongLived     int    `json:"longLived"`
	AutoLongLived int    `json:"autoLongLived"`
	Leaked        int    `json:"leaked"`
	LeaksReported uint64 `json:"leaksReported"`
}

// leakView is a current leak as the page shows it.
type leakView struct {
	ConnID    uint64  `json:"connId"`
	Kind      string  `json:"kind"`
	Owner     string  `json:"owner"`
	Site      string  `json:"site"`
	HeldForMs float64 `json:"heldForMs"`
	MaxHoldMs float64 `json:"maxHoldMs"`
}

// queueView are the queue's counts.
type queueView struct {
	Waiting int `json:"waiting"`
	Active  int `json:"active"`
	Delayed int `json:"delayed"`
}

// sample takes a snapshot of the pool and the service.
func (s *service) sample(ctx context.Context) sample {
	now := time.Now()
	v := s.view()
	st, holds := v.stats, v.holds
	out := sample{
		T: now.UnixMilli(), UptimeMs: now.Sub(s.started).Milliseconds(),
		Total: st.Total, Idle: st.Idle, InUse: st.InUse, LongLived: st.LongLived, Leaked: st.Leaked,
		LeaksReported: st.LeaksReported,
		Leaks:         []leakView{},
		Holders:       groupHolders(holds),
		Jobs:          s.totals(),
		SSEClients:    s.sse.Stats().Clients,
		Keyspace:      s.keyspaceNote,
		AutoDetection: s.cfg.AutoLongLived,
		AutoLongLived: v.tracker.AutoLongLived,
		AutoHolders:   autoViews(v.trackerHolds),
	}
	if s.naive != nil {
		out.Tracker = &verdict{LongLived: v.tracker.LongLived, AutoLongLived: v.tracker.AutoLongLived,
			Leaked: v.tracker.Leaked, LeaksReported: v.tracker.LeaksReported}
	}
	for _, h := range holds {
		if h.Leaked {
			out.Leaks = append(out.Leaks, leakView{
				ConnID: h.ConnID, Kind: string(h.Kind), Owner: h.Owner, Site: h.Site,
				HeldForMs: float64(h.HeldFor) / float64(time.Millisecond), MaxHoldMs: float64(h.MaxHold) / float64(time.Millisecond),
			})
		}
	}
	if out.Holders == nil {
		out.Holders = []holderGroup{}
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if c, err := s.queue.Counts(cctx); err == nil {
		out.Queue = queueView{Waiting: c.Waiting + c.Prioritized, Active: c.Active, Delayed: c.Delayed}
	}
	return out
}

// publishStats publishes a sample to the stats topic every 500 ms, through
// the SSE manager: the dashboard's chart is fed by the project's own SSE.
func (s *service) publishStats(ctx context.Context) {
	tk := time.NewTicker(500 * time.Millisecond)
	defer tk.Stop()
	for {
		b, err := json.Marshal(s.sample(ctx))
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			id, err := s.sse.Publish(pctx, statsTopic, sse.Event{Event: "stats", Data: string(b)})
			cancel()
			if err == nil {
				s.history.add(id)
			} else if ctx.Err() == nil {
				fmt.Fprintf(s.out, "publish stats: %v\n", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
	}
}

// idRing remembers the ids of the last stats events, so that a new page
// can start from the oldest: the SSE manager replays the history after
// that cursor and the chart starts full.
type idRing struct {
	mu   sync.Mutex
	ids  []string
	next int
	full bool
}

func newIDRing(n int) *idRing { return &idRing{ids: make([]string, n)} }

func (r *idRing) add(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids[r.next] = id
	r.next = (r.next + 1) % len(r.ids)
	if r.next == 0 {
		r.full = true
	}
}

// oldest returns the oldest id kept, or "".
func (r *idRing) oldest() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.full {
		return r.ids[r.next]
	}
	return r.ids[0]
}

// pageData fills web/index.html.
type pageData struct {
	Redis         string
	Naive         bool
	Auto          bool // -auto-long-lived
	MarksStripped bool // -mark-long-lived=false -auto-long-lived
	MaxHold       string
	ScanInterval  string
	Since         string
	Keyspace      string
	Leak          bool
	LeakAfter     string
	HistoryPoints int
}

func (s *service) serveDashboard(w http.ResponseWriter, r *http.Request) {
	label := "embedded miniredis"
	if s.cfg.redisOpts != nil {
		label = redisLabel(s.cfg.redisOpts)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_ = dashboardPage.Execute(w, pageData{
		Redis: label, Naive: !s.cfg.MarkLongLived,
		Auto: s.cfg.AutoLongLived, MarksStripped: !s.cfg.MarkLongLived && s.cfg.AutoLongLived,
		MaxHold: s.cfg.MaxHold.String(), ScanInterval: s.cfg.ScanInterval.String(),
		Since: s.history.oldest(), Keyspace: s.keyspaceNote,
		Leak: s.cfg.Leak, LeakAfter: s.cfg.LeakAfter.String(), HistoryPoints: len(s.history.ids),
	})
}
