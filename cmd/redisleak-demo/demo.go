package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/redisleak/redisleak"
)

// result is what a run saw: printed at the end, checked by the tests.
//
// In the naive mode (-mark-long-lived=false) Stats, Leaks, Holds and
// Reported carry the naive detector's verdict (see naiveDetector); the
// Tracker… fields always carry the tracker's own.
type result struct {
	URL       string
	Redis     string // "miniredis (embedded)" or the server, without password
	KeyPrefix string // every key and channel the run wrote starts with it
	Stats     redisleak.Stats
	Leaks     []redisleak.Leak // current leaks at the end
	Holds     []redisleak.Leak // every current hold at the end
	Reported  []redisleak.Leak // every leak reported during the run (OnLeak)
	Keyspace  string           // "on" or why it is off
	Jobs      jobTotals

	// AutoLongLived is -auto-long-lived (the tracker's
	// Options.AutoLongLived); MarksStripped says the companions' marks
	// were hidden from the tracker (with -mark-long-lived=false).
	AutoLongLived, MarksStripped bool
	TrackerStats                 redisleak.Stats
	TrackerHolds                 []redisleak.Leak // the tracker's holds at the end, with LongLivedBy
	TrackerReported              []redisleak.Leak // the tracker's reports (OnLeak)
	Auto                         []redisleak.Leak // TrackerHolds long-lived by behaviour
	AutoSeen                     []autoSighting   // holders seen long-lived by behaviour during the run
}

// syncWriter serialises writes of the logger and the status lines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// run starts the service, serves until ctx ends (or cfg.Duration passes),
// prints the final stats, shuts everything down and returns what it saw.
func run(ctx context.Context, cfg config, stdout io.Writer) (*result, error) {
	start := time.Now()
	out := &syncWriter{w: stdout}
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}

	// Redis: a real server (-redis), or an embedded miniredis.
	res := &result{}
	var opts redis.Options
	var mr *miniredis.Miniredis
	if cfg.redisOpts != nil {
		opts = *cfg.redisOpts // a copy: NewClient fills in defaults
		res.Redis = redisLabel(cfg.redisOpts)
	} else {
		mr = miniredis.NewMiniRedis()
		if err := mr.Start(); err != nil {
			return nil, fmt.Errorf("embedded Redis: %w", err)
		}
		defer mr.Close()
		opts.Addr = mr.Addr()
		res.Redis = "miniredis (embedded)"
	}
	// Maintenance notifications are a Redis Enterprise/Cloud handshake
	// that older servers reject; the demo does not need them.
	opts.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	// Check the server with a client of its own, so that a failure leaves
	// the demo's client (and its tracker) untouched.
	popts := opts
	popts.MaxRetries, popts.DialTimeout = -1, 3*time.Second
	probe := redis.NewClient(&popts)
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	err := probe.Ping(pctx).Err()
	pcancel()
	_ = probe.Close()
	if err != nil {
		return nil, fmt.Errorf("cannot reach Redis at %s: %w", res.Redis, err)
	}
	rdb := redis.NewClient(&opts)
	defer rdb.Close()
	res.AutoLongLived = cfg.AutoLongLived
	if !cfg.MarkLongLived && cfg.AutoLongLived {
		// Ahead of the tracker's hooks: the tracker never sees the marks.
		rdb.AddHook(unmarkHook{})
		res.MarksStripped = true
	}

	metrics, err := newMetrics()
	if err != nil {
		return nil, err
	}
	defer metrics.shutdown()

	logger := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelInfo}))
	trLogger := logger
	var naive *naiveDetector
	if !cfg.MarkLongLived {
		// The console shows the naive detector's reports, not the
		// tracker's (which still runs underneath) — unless the tracker's
		// automatic detection is on: then both, side by side.
		naive = newNaiveDetector(cfg.MaxHold, logger)
		if !cfg.AutoLongLived {
			trLogger = slog.New(slog.DiscardHandler)
		}
	}
	var (
		reportedMu sync.Mutex
		reported   []redisleak.Leak
	)
	tr, err := redisleak.Instrument(rdb, redisleak.Options{
		MaxHold:          cfg.MaxHold,
		ScanInterval:     cfg.ScanInterval,
		AutoLongLived:    cfg.AutoLongLived,
		Logger:           trLogger,
		HandlerShowSites: true, // a demo: show where leaks come from
		MeterProvider:    metrics.provider,
		OnLeak: func(l redisleak.Leak) {
			reportedMu.Lock()
			reported = append(reported, l)
			reportedMu.Unlock()
		},
	})
	if err != nil {
		return nil, err
	}
	defer tr.Close()

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("%w (pick another address with -listen, e.g. -listen :0)", err)
	}
	res.URL = urlOf(ln.Addr())

	svc, err := startService(ctx, serviceConfig{
		cfg: cfg, rdb: rdb, tr: tr, out: out, miniredis: mr != nil,
		baseURL: res.URL, metrics: metrics, started: start, naive: naive,
	})
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	defer svc.release()
	res.Keyspace = svc.keyspaceNote
	res.KeyPrefix = svc.prefix()

	srv := &http.Server{Handler: svc.routes(tr.Handler(), metrics.handler), ReadHeaderTimeout: 10 * time.Second}
	srv.RegisterOnShutdown(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = svc.sse.Close(cctx)
	})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	mode := modeLine(cfg)
	fmt.Fprintf(out, "redisleak demo: dashboard at %s\n", res.URL)
	fmt.Fprintf(out, "  redis: %s; tracker: max hold %v, scan every %v; %s\n", res.Redis, cfg.MaxHold, cfg.ScanInterval, mode)
	fmt.Fprintf(out, "  keyspace manager: %s\n", svc.keyspaceNote)
	fmt.Fprintf(out, "  keys and channels: %s*\n", res.KeyPrefix)
	if cfg.Leak {
		fmt.Fprintf(out, "  the load generator calls the buggy /api/report after %v: it leaks one connection\n", cfg.LeakAfter)
	}
	if cfg.Duration > 0 {
		fmt.Fprintf(out, "  running for %v\n", cfg.Duration)
	} else {
		fmt.Fprintf(out, "  press Ctrl-C to stop\n")
	}
	if cfg.ready != nil {
		cfg.ready(res.URL)
	}

	svc.startLoops(ctx)

	var serveErr error
	select {
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.Canceled) {
			fmt.Fprintln(out, "interrupted: shutting down")
		}
	case serveErr = <-served:
	}

	// Final picture, while every holder is still running.
	res.Leaks = tr.Scan()
	res.Stats = tr.Stats()
	res.Holds = tr.Holds()
	res.Jobs = svc.totals()
	reportedMu.Lock()
	res.Reported = append([]redisleak.Leak(nil), reported...)
	reportedMu.Unlock()
	res.TrackerStats, res.TrackerHolds, res.TrackerReported = res.Stats, res.Holds, res.Reported
	res.Auto = autoHolders(res.Holds)
	if cfg.AutoLongLived {
		svc.autoLog.note(res.Holds, time.Since(start))
		res.AutoSeen = svc.autoLog.list()
	}
	if naive != nil {
		naive.scan(res.Holds)
		res.Stats = naive.stats(res.Stats, res.Holds)
		res.Leaks = naive.leaks(res.Holds)
		res.Holds = naive.judge(res.Holds)
		res.Reported = naive.reports()
	}
	printFinal(out, res, time.Since(start))

	// Shutdown: load and publishers first, then the HTTP server (which
	// ends the SSE streams), then the holders.
	svc.stopLoops()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if serveErr == nil {
		if err := srv.Shutdown(sctx); err != nil {
			fmt.Fprintf(out, "http shutdown: %v\n", err)
		}
		<-served
	}
	svc.shutdown(sctx)
	_ = tr.Close() // flushes the tracker's last log lines
	fmt.Fprintln(out, "redisleak demo: stopped")
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return res, serveErr
	}
	return res, nil
}

// urlOf names a listener's address as a URL a browser can open.
func urlOf(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return "http://" + a.String() + "/"
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port) + "/"
}

// modeLine says, in the console's first lines, which verdict the demo shows.
func modeLine(cfg config) string {
	switch {
	case !cfg.MarkLongLived && cfg.AutoLongLived:
		return "NAIVE detector (-mark-long-lived=false) beside the tracker with the companions' marks stripped and automatic long-lived detection on (-auto-long-lived)"
	case !cfg.MarkLongLived:
		return "NAIVE: every hold longer than max hold is a leak (-mark-long-lived=false)"
	case cfg.AutoLongLived:
		return "long-lived holders marked and recognised; automatic long-lived detection on (-auto-long-lived)"
	}
	return "long-lived holders marked and recognised"
}

// printFinal prints the stats, the leaks, the holders and the holders
// detected automatically.
func printFinal(w io.Writer, r *result, elapsed time.Duration) {
	s := r.Stats
	fmt.Fprintf(w, "\nfinal stats after %s: total=%d idle=%d in-use=%d long-lived=%d leaked=%d; leaks reported=%d\n",
		duration(elapsed), s.Total, s.Idle, s.InUse, s.LongLived, s.Leaked, s.LeaksReported)
	fmt.Fprintf(w, "jobs: signups=%d completed=%d failed=%d; keyspace: %s\n", r.Jobs.Signups, r.Jobs.Completed, r.Jobs.Failed, r.Keyspace)
	if len(r.Leaks) == 0 {
		fmt.Fprintln(w, "current leaks: none")
	} else {
		fmt.Fprintf(w, "current leaks (%d):\n", len(r.Leaks))
		for _, l := range r.Leaks {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	groups := groupHolders(r.Holds)
	if len(groups) > 0 {
		fmt.Fprintln(w, "holders now:")
		for _, g := range groups {
			state := "in use"
			switch {
			case g.Leaked > 0:
				state = "LEAKED"
			case g.LongLived && g.By != "":
				state = "long-lived (" + g.By + ")"
			case g.LongLived:
				state = "long-lived"
			}
			fmt.Fprintf(w, "  %-22s %-9s owner %-28q x%d, longest %s\n", state, g.Kind, g.Owner, g.Count, duration(time.Duration(g.MaxHeldMs*float64(time.Millisecond))))
		}
	}
	printAuto(w, r)
	fmt.Fprintln(w)
}

// printAuto prints the tracker's automatic long-lived detection: off, or
// its count and the holders it classified by behaviour.
func printAuto(w io.Writer, r *result) {
	if !r.AutoLongLived {
		fmt.Fprintln(w, "automatic long-lived detection: off (-auto-long-lived turns it on)")
		return
	}
	ts := r.TrackerStats
	how := ""
	if r.MarksStripped {
		how = ", the companions' marks stripped"
	}
	fmt.Fprintf(w, "automatic long-lived detection: on%s; the tracker's verdict: long-lived=%d auto-long-lived=%d leaked=%d; leaks reported=%d\n",
		how, ts.LongLived, ts.AutoLongLived, ts.Leaked, ts.LeaksReported)
	if len(r.Auto) == 0 {
		fmt.Fprintln(w, "holders detected automatically now: none")
	} else {
		fmt.Fprintf(w, "holders detected automatically now (%d) — %s:\n", len(r.Auto), autoHint)
		for _, h := range r.Auto {
			fmt.Fprintf(w, "  %-9s owner %-28q held %s, idle %s, acquired at %s\n", h.Kind, h.Owner,
				duration(h.HeldFor), duration(h.IdleFor), orUnknown(h.Site))
		}
	}
	if len(r.AutoSeen) > 0 {
		fmt.Fprintln(w, "classified long-lived by behaviour during the run:")
		for _, a := range r.AutoSeen {
			fmt.Fprintf(w, "  %-9s owner %-28q acquired at %s: first after %s, in %d %s\n", a.Kind, a.Owner, orUnknown(a.Site),
				duration(a.First), a.Times, plural(a.Times, "sample", "samples"))
		}
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// holderGroup counts current holds by kind, owner and state.
type holderGroup struct {
	Kind      string  `json:"kind"`
	Owner     string  `json:"owner"`
	Count     int     `json:"count"`
	LongLived bool    `json:"longLived"`
	By        string  `json:"by,omitempty"` // why long-lived: Leak.LongLivedBy
	Leaked    int     `json:"leaked"`
	MaxHeldMs float64 `json:"maxHeldMs"`
}

func groupHolders(holds []redisleak.Leak) []holderGroup {
	idx := map[string]int{}
	var out []holderGroup
	for _, h := range holds {
		by := ""
		if h.LongLived {
			by = h.LongLivedBy
		}
		k := fmt.Sprintf("%s|%s|%v|%v|%s", h.Kind, h.Owner, h.LongLived, h.Leaked, by)
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, holderGroup{Kind: string(h.Kind), Owner: h.Owner, LongLived: h.LongLived, By: by})
		}
		g := &out[i]
		g.Count++
		if h.Leaked {
			g.Leaked++
		}
		if ms := float64(h.HeldFor) / float64(time.Millisecond); ms > g.MaxHeldMs {
			g.MaxHeldMs = ms
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if (a.Leaked > 0) != (b.Leaked > 0) {
			return a.Leaked > 0
		}
		if a.LongLived != b.LongLived {
			return a.LongLived
		}
		return strings.Compare(a.Owner+a.Kind+a.By, b.Owner+b.Kind+b.By) < 0
	})
	return out
}
