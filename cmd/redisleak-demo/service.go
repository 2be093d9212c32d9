package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
	bullmq "github.com/redisleak/redisleak/bullmq_compat"
	"github.com/redisleak/redisleak/keyspace"
	"github.com/redisleak/redisleak/sse"
)

// serviceConfig is what startService needs.
type serviceConfig struct {
	cfg       config
	rdb       *redis.Client
	tr        *redisleak.Tracker
	out       io.Writer
	miniredis bool
	baseURL   string
	metrics   *metrics
	started   time.Time
	naive     *naiveDetector // the naive mode's detector, or nil
}

// service is the demo's small application: everything runs on one client.
type service struct {
	serviceConfig
	runID string

	queue  *bullmq.Queue
	worker *bullmq.Worker
	events *bullmq.QueueEvents
	sse    *sse.Manager
	ks     *keyspace.Manager // nil when off

	keyspaceNote string

	signups, completed, failed, attemptsFailed, expired, reports atomic.Int64

	history *idRing // ids of the stats events published lately
	autoLog autoLog // holders seen long-lived by behaviour

	holdersWG sync.WaitGroup // worker.Run, the QueueEvents reader
	holderCtx context.Context
	stopHold  context.CancelFunc

	loopsWG   sync.WaitGroup // load generator, stats publisher, status line
	stopLoop  context.CancelFunc
	shutOnce  sync.Once
	leakMu    sync.Mutex
	leakConns []*redis.Conn
}

// jobTotals are the service's counters.
type jobTotals struct {
	Signups        int64 `json:"signups"`
	Completed      int64 `json:"completed"`
	Failed         int64 `json:"failed"`
	AttemptsFailed int64 `json:"attemptsFailed"`
	Reports        int64 `json:"reports"`
	Expired        int64 `json:"sessionsExpired"`
}

// Names of the topic the dashboard reads, of the queue and of the job.
const (
	statsTopic = "pool"
	queueName  = "welcome"
	jobName    = "welcome-email"
)

// startService creates the queue, the worker, the QueueEvents reader, the
// SSE manager and, on a real Redis, the keyspace manager. Only a failure of
// the queue, the worker or the SSE manager is an error.
func startService(ctx context.Context, sc serviceConfig) (*service, error) {
	s := &service{serviceConfig: sc, runID: newRunID(), history: newIDRing(240)}
	s.holderCtx, s.stopHold = context.WithCancel(context.WithoutCancel(ctx))
	ok := false
	defer func() {
		if !ok {
			s.release()
		}
	}()
	var err error
	// Every key and channel of the run starts with s.prefix(): the queue's
	// keys ("<tag>:welcome:..."), the SSE manager's history stream and
	// channel ("<tag>:history", "<tag>:live") and the service's own keys.
	tag := s.hashTag()
	if s.queue, err = bullmq.NewQueue(s.rdb, queueName, bullmq.QueueOptions{Prefix: tag, MaxQueueDepth: 10000}); err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	s.worker, err = bullmq.NewWorker(s.rdb, queueName, s.sendWelcomeEmail, bullmq.WorkerOptions{
		Prefix:           tag,
		Concurrency:      s.cfg.Concurrency,
		Name:             "redisleak-demo",
		DrainDelay:       time.Second,
		RemoveOnComplete: bullmq.KeepLast(500),
		RemoveOnFail:     bullmq.KeepLast(500),
		OnError:          func(err error) { fmt.Fprintf(s.out, "worker: %v\n", err) },
	})
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	if s.events, err = bullmq.NewQueueEvents(ctx, s.rdb, queueName, bullmq.QueueEventsOptions{Prefix: tag, BlockTimeout: 5 * time.Second}); err != nil {
		return nil, fmt.Errorf("queue events: %w", err)
	}
	s.sse, err = sse.NewManager(s.rdb, sse.Options{
		Namespace:   tag[1 : len(tag)-1], // the manager adds the braces
		Heartbeat:   5 * time.Second,
		Retry:       time.Second,
		HistorySize: 2000,
		OnError:     func(err error) { fmt.Fprintf(s.out, "sse: %v\n", err) },
	})
	if err != nil {
		return nil, fmt.Errorf("sse: %w", err)
	}
	s.startKeyspace(ctx)
	s.metrics.observeService(s)

	s.holdersWG.Add(2)
	go func() {
		defer s.holdersWG.Done()
		if err := s.worker.Run(s.holderCtx); err != nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintf(s.out, "worker stopped: %v\n", err)
		}
	}()
	go func() {
		defer s.holdersWG.Done()
		s.countEvents(s.holderCtx)
	}()
	ok = true
	return s, nil
}

// startKeyspace starts the keyspace manager on a real Redis; it says why
// when it does not.
func (s *service) startKeyspace(ctx context.Context) {
	if s.miniredis {
		s.keyspaceNote = "off: the embedded miniredis has no keyspace notifications and no CONFIG (run with -redis host:port or a redis:// URL)"
		return
	}
	ks, err := keyspace.NewManager(s.rdb, keyspace.Options{
		Flags:          "Egx", // keyevent channels, generic and expired events
		DB:             s.rdb.Options().DB,
		RestoreOnClose: true,
		OnError:        func(err error) { fmt.Fprintf(s.out, "keyspace: %v\n", err) },
	})
	if err == nil {
		err = ks.HandleEvents(keyspace.PrefixPattern(s.key("session:")), func(keyspace.Event) { s.expired.Add(1) }, keyspace.EventExpired)
	}
	if err == nil {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = ks.Start(sctx)
		cancel()
	}
	if err != nil {
		if ks != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = ks.Close(cctx)
			cancel()
		}
		s.keyspaceNote = "off: " + err.Error()
		return
	}
	s.ks = ks
	s.keyspaceNote = "on: counts expired sessions (notify-keyspace-events merged with \"Egx\", restored on exit)"
}

// hashTag is "{redisleak-demo-<run>}": the first part of every key and
// channel of this run (and, on a cluster, one slot for all of them).
func (s *service) hashTag() string { return "{redisleak-demo-" + s.runID + "}" }

// prefix is what every key and channel of this run starts with.
func (s *service) prefix() string { return s.hashTag() + ":" }

// key names a key of this run.
func (s *service) key(suffix string) string { return s.prefix() + suffix }

func newRunID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// signup is a job's data.
type signup struct {
	User string `json:"user"`
}

// sendWelcomeEmail is the worker's handler: a lookup through the pool,
// some "SMTP" time, now and then a temporary failure (retried).
func (s *service) sendWelcomeEmail(ctx context.Context, job *bullmq.Job) (any, error) {
	var d signup
	if err := json.Unmarshal(job.Data, &d); err != nil {
		return nil, bullmq.Unrecoverable(err)
	}
	if err := s.rdb.Exists(ctx, s.key("session:"+d.User)).Err(); err != nil {
		return nil, err
	}
	select {
	case <-time.After(time.Duration(20+mrand.IntN(100)) * time.Millisecond):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if mrand.IntN(12) == 0 {
		s.attemptsFailed.Add(1)
		return nil, errors.New("smtp: 421 service not available, try again later")
	}
	if err := s.rdb.Incr(ctx, s.key("emails:sent")).Err(); err != nil {
		return nil, err
	}
	return map[string]any{"sent": true, "to": d.User + "@example.com"}, nil
}

// countEvents reads the queue's events stream (as Node's QueueEvents would)
// and counts finished jobs.
func (s *service) countEvents(ctx context.Context) {
	for {
		ev, err := s.events.Next(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, bullmq.ErrClosed) {
				return
			}
			select {
			case <-time.After(200 * time.Millisecond):
			case <-ctx.Done():
				return
			}
			continue
		}
		switch ev.Name {
		case "completed":
			s.completed.Add(1)
		case "failed":
			s.failed.Add(1)
		}
	}
}

func (s *service) totals() jobTotals {
	return jobTotals{
		Signups: s.signups.Load(), Completed: s.completed.Load(), Failed: s.failed.Load(),
		AttemptsFailed: s.attemptsFailed.Load(), Reports: s.reports.Load(), Expired: s.expired.Load(),
	}
}

// routes is the demo's HTTP API and pages.
func (s *service) routes(health, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.serveDashboard)
	mux.Handle("GET /static/", staticHandler())
	mux.Handle("/events", s.sse)
	mux.Handle("/health/redis-pool", health)
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("POST /api/signup", s.handleSignup)
	mux.HandleFunc("GET /api/jobs/{id}", s.handleJob)
	mux.HandleFunc("GET /api/report", s.handleReport)
	mux.HandleFunc("GET /api/stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.sample(r.Context()))
	})
	return mux
}

// handleSignup stores a session (it expires after 3 s) and enqueues a
// welcome e-mail.
func (s *service) handleSignup(w http.ResponseWriter, r *http.Request) {
	user := r.FormValue("user")
	if user == "" {
		user = fmt.Sprintf("user%05d", mrand.IntN(100000))
	}
	if len(user) > 64 || strings.ContainsAny(user, "\r\n") {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad user name"})
		return
	}
	ctx := r.Context()
	if err := s.rdb.Set(ctx, s.key("session:"+user), newRunID(), 3*time.Second).Err(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		return
	}
	job, err := s.queue.Add(ctx, jobName, signup{User: user}, bullmq.JobOptions{
		Attempts: 3,
		Backoff:  bullmq.Backoff{Type: "fixed", Delay: 200 * time.Millisecond},
	})
	if err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, bullmq.ErrQueueFull) {
			status = http.StatusServiceUnavailable
		}
		writeJSON(w, status, map[string]string{"error": err.Error()})
		return
	}
	s.signups.Add(1)
	writeJSON(w, http.StatusAccepted, map[string]string{"user": user, "job": job.ID})
}

func (s *service) handleJob(w http.ResponseWriter, r *http.Request) {
	job, err := s.queue.GetJob(r.Context(), r.PathValue("id"))
	if errors.Is(err, bullmq.ErrJobNotFound) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such job"})
		return
	}
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"id": job.ID, "name": job.Name, "data": job.Data, "attemptsMade": job.AttemptsMade,
		"returnValue": job.ReturnValue, "failedReason": job.FailedReason, "finishedOn": job.FinishedOn,
	})
}

// handleReport serves the signup report, through the buggy leakyReport.
func (s *service) handleReport(w http.ResponseWriter, r *http.Request) {
	rep, err := s.leakyReport(r.Context())
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// signupReport is what /api/report answers.
type signupReport struct {
	Signups    int64 `json:"signups"`
	EmailsSent int64 `json:"emailsSent"`
}

// leakyReport builds the signup report on a dedicated connection (two
// reads that must see the same server). It contains the bug this demo
// exists to show: when there is something to report it returns without
// conn.Close(), so the connection never goes back to the pool. The tracker
// reports it after -max-hold, naming this function as the acquisition site.
func (s *service) leakyReport(ctx context.Context) (signupReport, error) {
	s.reports.Add(1)
	conn := s.rdb.Conn()
	n, err := conn.Get(ctx, s.key("emails:sent")).Int64() // the leak's acquisition site
	if err != nil && !errors.Is(err, redis.Nil) {
		_ = conn.Close()
		return signupReport{}, err
	}
	rep := signupReport{Signups: s.signups.Load(), EmailsSent: n}
	if n > 0 {
		// BUG (on purpose): this path forgets conn.Close(). The demo keeps
		// a reference only so that it can close the connection at exit.
		s.leakMu.Lock()
		s.leakConns = append(s.leakConns, conn)
		s.leakMu.Unlock()
		return rep, nil
	}
	_ = conn.Close()
	return rep, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// startLoops starts the load generator, the stats publisher, the status
// line and the naive detector (in the naive mode); they run until ctx ends or stopLoops.
func (s *service) startLoops(ctx context.Context) {
	ctx, s.stopLoop = context.WithCancel(ctx)
	s.loopsWG.Add(3)
	go func() { defer s.loopsWG.Done(); s.generateLoad(ctx) }()
	go func() { defer s.loopsWG.Done(); s.publishStats(ctx) }()
	go func() { defer s.loopsWG.Done(); s.printStatus(ctx) }()
	if s.naive != nil {
		s.loopsWG.Add(1)
		go func() { defer s.loopsWG.Done(); s.naive.run(ctx, s.tr, s.cfg.ScanInterval) }()
	}
}

// poolView is the pool as the demo shows it: stats and holds (the
// tracker's, or in the naive mode the naive detector's verdict on them),
// and the tracker's own.
type poolView struct {
	stats        redisleak.Stats
	holds        []redisleak.Leak
	tracker      redisleak.Stats
	trackerHolds []redisleak.Leak
}

func (s *service) view() poolView {
	st, holds := s.tr.Stats(), s.tr.Holds()
	v := poolView{stats: st, holds: holds, tracker: st, trackerHolds: holds}
	if s.cfg.AutoLongLived {
		s.autoLog.note(holds, time.Since(s.started))
	}
	if s.naive != nil {
		v.stats, v.holds = s.naive.stats(st, holds), s.naive.judge(holds)
	}
	return v
}

// stopLoops stops what startLoops started and waits for it.
func (s *service) stopLoops() {
	if s.stopLoop != nil {
		s.stopLoop()
	}
	s.loopsWG.Wait()
}

// generateLoad calls the API like a client would: signups at cfg.Rate per
// second, and, once, after cfg.LeakAfter, the buggy report.
func (s *service) generateLoad(ctx context.Context) {
	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	defer tr.CloseIdleConnections()
	var side sync.WaitGroup
	defer side.Wait() // before CloseIdleConnections
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	call := func(method, path string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, method, s.baseURL+strings.TrimPrefix(path, "/"), nil)
		if err != nil {
			return nil, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp, nil
	}
	var leak <-chan time.Time
	if s.cfg.Leak {
		t := time.NewTimer(s.cfg.LeakAfter)
		defer t.Stop()
		leak = t.C
	}
	var tick <-chan time.Time
	if s.cfg.Rate > 0 {
		tk := time.NewTicker(time.Duration(float64(time.Second) / s.cfg.Rate))
		defer tk.Stop()
		tick = tk.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			if _, err := call(http.MethodPost, "/api/signup"); err != nil && ctx.Err() == nil {
				fmt.Fprintf(s.out, "load: %v\n", err)
			}
		case <-leak:
			// Beside the signups, so that a slow signup does not delay it.
			side.Add(1)
			go func() {
				defer side.Done()
				// The report only leaks when there is something to report.
				_ = s.rdb.SetNX(ctx, s.key("emails:sent"), 1, 0).Err()
				resp, err := call(http.MethodGet, "/api/report")
				if err != nil {
					if ctx.Err() == nil {
						fmt.Fprintf(s.out, "load: /api/report: %v\n", err)
					}
					return
				}
				fmt.Fprintf(s.out, "%7s  load: called GET /api/report (%s): leakyReport kept its connection; expect a leak report after %v\n",
					duration(time.Since(s.started)), resp.Status, s.cfg.MaxHold)
			}()
		}
	}
}

// printStatus prints one short line every cfg.StatusEvery.
func (s *service) printStatus(ctx context.Context) {
	if s.cfg.StatusEvery <= 0 {
		return
	}
	tk := time.NewTicker(s.cfg.StatusEvery)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			v := s.view()
			st := v.stats
			j := s.totals()
			auto := ""
			if s.cfg.AutoLongLived {
				auto = fmt.Sprintf(" | tracker: long-lived=%d auto=%d leaked=%d", v.tracker.LongLived, v.tracker.AutoLongLived, v.tracker.Leaked)
			}
			fmt.Fprintf(s.out, "%7s  pool total=%d in-use=%d long-lived=%d leaked=%d%s | jobs done=%d failed=%d | sse clients=%d\n",
				duration(time.Since(s.started)), st.Total, st.InUse, st.LongLived, st.Leaked, auto, j.Completed, j.Failed, s.sse.Stats().Clients)
		}
	}
}

// release is shutdown with a short deadline, for early exits.
func (s *service) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.shutdown(ctx)
}

// shutdown stops the holders (worker, QueueEvents, keyspace, SSE), closes
// the leaked connections, and deletes this run's keys on a real Redis.
// Safe to call more than once.
func (s *service) shutdown(ctx context.Context) {
	s.shutOnce.Do(func() {
		s.stopLoops()
		if s.worker != nil {
			if err := s.worker.Close(ctx); err != nil {
				fmt.Fprintf(s.out, "worker close: %v\n", err)
			}
		}
		if s.events != nil {
			_ = s.events.Close()
		}
		s.stopHold()
		s.holdersWG.Wait()
		if s.ks != nil {
			if err := s.ks.Close(ctx); err != nil {
				fmt.Fprintf(s.out, "keyspace close: %v\n", err)
			}
		}
		if s.sse != nil {
			if err := s.sse.Close(ctx); err != nil {
				fmt.Fprintf(s.out, "sse close: %v\n", err)
			}
		}
		if s.queue != nil {
			_ = s.queue.Close()
		}
		s.leakMu.Lock()
		for _, c := range s.leakConns {
			_ = c.Close()
		}
		s.leakConns = nil
		s.leakMu.Unlock()
		if !s.miniredis {
			s.deleteKeys(ctx)
		}
	})
}

// deleteKeys removes what this run wrote to a real Redis.
func (s *service) deleteKeys(ctx context.Context) {
	// No glob metacharacter in the prefix: braces are literal in SCAN.
	iter := s.rdb.Scan(ctx, 0, s.prefix()+"*", 500).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	for len(keys) > 0 {
		n := min(len(keys), 500)
		_ = s.rdb.Unlink(ctx, keys[:n]...).Err()
		keys = keys[n:]
	}
}
