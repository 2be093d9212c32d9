package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redisleak/redisleak/internal/redistest"
)

// TestBrowser loads the dashboard in headless Chromium and checks what the
// page shows: the chart keeps updating from the SSE stream (with the
// history replayed first), the leaked series is drawn in red, and the
// seeded leak is listed with its site. It saves a screenshot,
// dashboard.png, in the test's temp dir (and in $REDISLEAK_ARTIFACTS when
// set). Chromium is driven over the DevTools protocol on a pipe
// (--remote-debugging-pipe): no dependency, no port.
func TestBrowser(t *testing.T) {
	bin := redistest.Chromium(t)
	t.Run("marked", func(t *testing.T) { testBrowser(t, bin, "dashboard.png", false) })
	// The naive picture: the companions' holders are listed as leaks too.
	t.Run("naive", func(t *testing.T) { testBrowser(t, bin, "dashboard-naive.png", true, "-mark-long-lived=false") })
	// Marks stripped, automatic detection on: the naive verdict above,
	// the tracker's own beside it.
	t.Run("naive-auto", func(t *testing.T) {
		testBrowser(t, bin, "dashboard-naive-auto.png", true, "-mark-long-lived=false", "-auto-long-lived")
	})
	// On a real Redis the keyspace manager is on: the page counts expired
	// sessions.
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Private(t)
		testBrowser(t, bin, "dashboard-redis.png", false, "-redis", srv.Addr)
	})
}

func testBrowser(t *testing.T, bin, shotName string, naive bool, args ...string) {
	cfg := testConfig(t, append([]string{"-leak-after", "1s", "-status", "0"}, args...)...)
	urls := make(chan string, 1)
	cfg.ready = func(u string) { urls <- u }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out lockedBuffer
	done := make(chan error, 1)
	go func() {
		_, err := run(ctx, cfg, &out)
		done <- err
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("run did not return within 30s")
		}
		if t.Failed() {
			t.Logf("demo output:\n%s", out.String())
		}
	}()
	var base string
	select {
	case base = <-urls:
	case <-time.After(20 * time.Second):
		t.Fatal("demo not ready within 20s")
	}
	// Let a few stats events accumulate: the page replays them first.
	time.Sleep(2 * time.Second)

	b := startBrowser(t, bin)
	defer b.close()
	tab := b.newTab(t, "about:blank")
	tab.call(t, "Emulation.setDeviceMetricsOverride", map[string]any{"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": false})
	tab.call(t, "Page.navigate", map[string]any{"url": base})

	// What the page shows, read from its DOM and canvas.
	const probe = `(() => {
	  if (!document.body || !document.getElementById('leaks')) return '{}';
	  const c = document.getElementById('chart');
	  let red = 0;
	  if (c && c.width) {
	    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
	    for (let i = 0; i < d.length; i += 4) if (d[i] > 190 && d[i+1] < 90 && d[i+2] < 90 && d[i+3] > 200) red++;
	  }
	  const rows = Array.from(document.querySelectorAll('#leaks tbody tr.leak')).map(r => r.innerText);
	  return JSON.stringify({points: +document.body.dataset.points, last: +(document.body.dataset.last || 0),
	    leaked: (document.getElementById('v-leaked') || {}).textContent, live: (document.getElementById('conn-state') || {}).textContent,
	    expired: (document.getElementById('k-expired') || {}).textContent,
	    autoTile: (document.getElementById('v-auto') || {}).textContent,
	    auto: Array.from(document.querySelectorAll('#auto tbody tr')).map(r => r.innerText),
	    verdict: (document.getElementById('auto-verdict') || {}).hidden ? '' : (document.getElementById('auto-verdict') || {}).textContent,
	    badges: (document.querySelector('header .badges') || {}).innerText,
	    red: red, rows: rows});
	})()`
	type view struct {
		Points  int
		Last    int64
		Leaked  string
		Expired string
		Live    string
		Red     int
		Rows    []string
		// the section of holders long-lived by behaviour
		AutoTile, Verdict, Badges string
		Auto                      []string
	}
	look := func() view {
		var v view
		var s string
		tab.eval(t, probe, &s)
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("probe: %v: %s", err, s)
		}
		return v
	}
	var first, v view
	deadline := time.Now().Add(30 * time.Second)
	for {
		v = look()
		if first.Points == 0 && v.Points > 0 {
			first = v
		}
		leakListed := len(v.Rows) == 1 && strings.Contains(v.Rows[0], "leakyReport")
		if naive {
			all := strings.Join(v.Rows, "\n")
			leakListed = len(v.Rows) >= 5 && strings.Contains(all, "leakyReport") && strings.Contains(all, "sse") &&
				strings.Contains(all, "bullmq:worker") && !strings.Contains(all, "untagHook")
		}
		keyspaceShown := v.Expired == "off"
		if len(args) > 0 && args[0] == "-redis" {
			keyspaceShown = v.Expired != "" && v.Expired != "off" && v.Expired != "0" && v.Expired != "–"
		}
		// Automatic detection: off says so; in the naive mode the
		// tracker's own verdict shows beside the naive one; with the
		// marks stripped and automatic detection on, the page says so.
		autoShown := v.AutoTile == "off" && len(v.Auto) == 1 && v.Auto[0] == "automatic detection off (run with -auto-long-lived)" &&
			(v.Verdict == "") != naive && (!naive || strings.HasPrefix(v.Verdict, "The tracker's own verdict"))
		if slices.Contains(args, "-auto-long-lived") {
			autoShown = v.AutoTile != "off" && v.AutoTile != "–" && len(v.Auto) > 0 && !strings.Contains(v.Auto[0], "off") &&
				strings.HasPrefix(v.Verdict, "The tracker's own verdict") && strings.Contains(v.Badges, "companions' marks stripped") &&
				strings.Contains(v.Badges, "automatic long-lived detection on")
		}
		if first.Points > 0 && v.Points >= first.Points+4 && keyspaceShown && v.Last > first.Last && leakListed && v.Red > 50 && v.Live == "live" && autoShown {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dashboard within 30s: first %+v, last %+v", first, v)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if first.Points < 3 {
		t.Errorf("first view had %d points: the history was not replayed", first.Points)
	}
	t.Logf("dashboard: %d stats events (%d at first sight), leak rows %q, %d red pixels; auto %s %q %q", v.Points, first.Points, v.Rows, v.Red, v.AutoTile, v.Auto, v.Verdict)

	var shot struct {
		Data string `json:"data"`
	}
	tab.callInto(t, "Page.captureScreenshot", map[string]any{"format": "png"}, &shot)
	png, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil || len(png) < 1000 {
		t.Fatalf("screenshot: %v (%d bytes)", err, len(png))
	}
	path := filepath.Join(t.TempDir(), shotName)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	if dir := os.Getenv("REDISLEAK_ARTIFACTS"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err == nil {
			p := filepath.Join(dir, "redisleak-demo-"+shotName)
			if err := os.WriteFile(p, png, 0o644); err == nil {
				t.Logf("screenshot copied to %s", p)
			}
		}
	}
}

// browser is a headless Chromium driven over --remote-debugging-pipe:
// JSON messages separated by NUL, commands on fd 3, answers on fd 4.
type browser struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	w      io.WriteCloser
	readWG sync.WaitGroup

	mu      sync.Mutex
	nextID  int
	pending map[int]chan cdpAnswer
	wmu     sync.Mutex
}

type cdpAnswer struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Message string `json:"message"`
	} `json:"error"`
}

func startBrowser(t *testing.T, bin string) *browser {
	t.Helper()
	cmdR, cmdW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ansR, ansW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{stderr: &lockedBuffer{}, w: cmdW, pending: map[int]chan cdpAnswer{}}
	b.cmd = exec.Command(bin, append(redistest.ChromiumFlags,
		"--hide-scrollbars", "--window-size=1200,900", "--remote-debugging-pipe", "--user-data-dir="+t.TempDir(), "about:blank")...)
	b.cmd.ExtraFiles = []*os.File{cmdR, ansW} // fd 3, fd 4
	b.cmd.Stderr = b.stderr
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := b.cmd.Start(); err != nil {
		_ = cmdR.Close()
		_ = cmdW.Close()
		_ = ansR.Close()
		_ = ansW.Close()
		redistest.Unavailable(t, "cannot start chromium: "+err.Error())
	}
	_ = cmdR.Close()
	_ = ansW.Close()
	b.readWG.Add(1)
	go b.read(ansR)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("chromium stderr:\n%s", b.stderr.String())
		}
	})
	return b
}

// read dispatches answers by id until the pipe closes; events are dropped.
func (b *browser) read(r *os.File) {
	defer b.readWG.Done()
	defer r.Close()
	br := bufio.NewReader(r)
	for {
		msg, err := br.ReadBytes(0)
		if err != nil {
			b.mu.Lock()
			for id, ch := range b.pending {
				close(ch)
				delete(b.pending, id)
			}
			b.mu.Unlock()
			return
		}
		var m struct {
			ID int `json:"id"`
			cdpAnswer
		}
		if json.Unmarshal(msg[:len(msg)-1], &m) != nil || m.ID == 0 {
			continue
		}
		b.mu.Lock()
		ch := b.pending[m.ID]
		delete(b.pending, m.ID)
		b.mu.Unlock()
		if ch != nil {
			ch <- m.cdpAnswer
		}
	}
}

// send runs one command, in a session or at the browser level.
func (b *browser) send(session, method string, params any) (json.RawMessage, error) {
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	ch := make(chan cdpAnswer, 1)
	b.pending[id] = ch
	b.mu.Unlock()
	msg := map[string]any{"id": id, "method": method, "params": params}
	if session != "" {
		msg["sessionId"] = session
	}
	data, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	b.wmu.Lock()
	_, err = b.w.Write(append(data, 0))
	b.wmu.Unlock()
	if err != nil {
		return nil, err
	}
	select {
	case a, ok := <-ch:
		if !ok {
			return nil, errors.New("browser closed the pipe")
		}
		if a.Error != nil {
			return nil, fmt.Errorf("%s: %s", method, a.Error.Message)
		}
		return a.Result, nil
	case <-time.After(20 * time.Second):
		return nil, fmt.Errorf("%s: no answer within 20s", method)
	}
}

// close kills the browser's process group and waits for the reader.
func (b *browser) close() {
	_ = b.w.Close()
	_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
	_ = b.cmd.Wait()
	b.readWG.Wait()
}

// tab is one page target, attached in flat mode.
type tab struct {
	b       *browser
	session string
}

func (b *browser) newTab(t *testing.T, url string) *tab {
	t.Helper()
	res, err := b.send("", "Target.createTarget", map[string]any{"url": url})
	if err != nil {
		t.Fatal(err)
	}
	var target struct {
		TargetID string `json:"targetId"`
	}
	_ = json.Unmarshal(res, &target)
	res, err = b.send("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true})
	if err != nil {
		t.Fatal(err)
	}
	var att struct {
		SessionID string `json:"sessionId"`
	}
	_ = json.Unmarshal(res, &att)
	if att.SessionID == "" {
		t.Fatalf("attachToTarget: %s", res)
	}
	return &tab{b: b, session: att.SessionID}
}

func (tb *tab) call(t *testing.T, method string, params any) {
	t.Helper()
	tb.callInto(t, method, params, nil)
}

func (tb *tab) callInto(t *testing.T, method string, params, into any) {
	t.Helper()
	res, err := tb.b.send(tb.session, method, params)
	if err != nil {
		t.Fatal(err)
	}
	if into != nil {
		if err := json.Unmarshal(res, into); err != nil {
			t.Fatalf("%s: %v", method, err)
		}
	}
}

// eval evaluates a JavaScript expression that returns a string.
func (tb *tab) eval(t *testing.T, expr string, into *string) {
	t.Helper()
	var r struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
		ExceptionDetails any `json:"exceptionDetails"`
	}
	tb.callInto(t, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &r)
	if r.ExceptionDetails != nil {
		t.Fatalf("evaluate: %v", r.ExceptionDetails)
	}
	s, _ := r.Result.Value.(string)
	*into = s
}

// fakeStream is an /events endpoint the test drives: it sends the stats
// events it is given, one stream at a time, and ends the current stream
// when told to.
type fakeStream struct {
	connected chan struct{} // one value per stream opened
	events    chan sample
	end       chan struct{}
}

func (f *fakeStream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	// A short reconnection delay for the test that ends a stream.
	_, _ = io.WriteString(w, "retry: 200\n\n")
	w.(http.Flusher).Flush()
	select {
	case f.connected <- struct{}{}:
	case <-r.Context().Done():
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-f.end:
			return
		case s := <-f.events:
			b, _ := json.Marshal(s)
			_, _ = fmt.Fprintf(w, "event: stats\ndata: %s\n\n", b)
			w.(http.Flusher).Flush()
		}
	}
}

// pageView is what TestDashboardPage reads from the page.
type pageView struct {
	State, Stream                                string
	Points                                       int
	Leaked                                       string
	Leaks, Holders                               [][]string
	Clients, Signups, Completed, Failed, Expired string
	Auto                                         [][]string // the holders long-lived by behaviour
	AutoTile, Verdict                            string
	VerdictHidden                                bool
}

// checkFacts checks the service's facts, each a number and its noun.
func checkFacts(t *testing.T, v pageView, clients, signups, completed, failed, expired string) {
	t.Helper()
	for _, c := range []struct{ got, want string }{
		{v.Clients, clients}, {v.Signups, signups}, {v.Completed, completed}, {v.Failed, failed}, {v.Expired, expired},
	} {
		if !strings.HasPrefix(c.got, c.want) {
			t.Errorf("shows %q, want %q", c.got, c.want)
		}
	}
}

// TestDashboardPage drives the page with stats events of the test's own
// making, so that what it shows is checked exactly: the badge says
// "connecting…" (and no table says "none") until the first event, even
// with the stream open; nouns agree with their numbers ("1 SSE client",
// "2 SSE clients", "1 connection"); durations past 90 s read "2m 5s",
// "1h 3m"; after a dropped stream the badge says "reconnecting…" until
// the next event. The section of holders long-lived by behaviour says
// "automatic detection off" when the switch is off, "on: none" when on
// with nothing detected, and lists detected holders with held and idle
// times, site and the hint to mark them; the tracker's own verdict shows
// when an event carries it (the naive mode).
func TestDashboardPage(t *testing.T) {
	bin := redistest.Chromium(t)
	cfg := testConfig(t)
	svc := &service{serviceConfig: serviceConfig{cfg: cfg, miniredis: true}, history: newIDRing(4),
		keyspaceNote: "on: counts expired sessions"}
	stream := &fakeStream{connected: make(chan struct{}), events: make(chan sample), end: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", svc.serveDashboard)
	mux.Handle("GET /static/", staticHandler())
	mux.Handle("GET /events", stream)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	// Ends the page's stream before srv.Close waits for it.
	defer srv.CloseClientConnections()

	b := startBrowser(t, bin)
	defer b.close()
	tab := b.newTab(t, "about:blank")
	tab.call(t, "Page.navigate", map[string]any{"url": srv.URL + "/"})

	const probe = `(() => {
	  const txt = (id) => (document.getElementById(id) || {}).innerText || '';
	  const rows = (id) => Array.from(document.querySelectorAll('#' + id + ' tbody tr')).map(r => Array.from(r.cells).map(c => c.innerText));
	  return JSON.stringify({state: txt('conn-state'), stream: document.body ? document.body.dataset.stream || '' : '',
	    points: document.body ? +document.body.dataset.points : 0,
	    leaked: txt('v-leaked'), leaks: rows('leaks'), holders: rows('holders'),
	    clients: txt('f-clients'), signups: txt('f-signups'), completed: txt('f-completed'), failed: txt('f-failed'),
	    expired: txt('f-expired'), auto: rows('auto'), autoTile: txt('v-auto'), verdict: txt('auto-verdict'),
	    verdictHidden: !!(document.getElementById('auto-verdict') || {}).hidden});
	})()`
	look := func() pageView {
		var v pageView
		var s string
		tab.eval(t, probe, &s)
		if s != "" {
			if err := json.Unmarshal([]byte(s), &v); err != nil {
				t.Fatalf("probe: %v: %s", err, s)
			}
		}
		return v
	}
	waitFor := func(what string, ok func(v pageView) bool) pageView {
		t.Helper()
		var v pageView
		deadline := time.Now().Add(30 * time.Second)
		for {
			v = look()
			if ok(v) {
				return v
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 30s; page: %+v", what, v)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	send := func(s sample) {
		t.Helper()
		select {
		case stream.events <- s:
		case <-time.After(30 * time.Second):
			t.Fatal("the page's stream took no event within 30s")
		}
	}
	waitConnected := func() {
		t.Helper()
		select {
		case <-stream.connected:
		case <-time.After(30 * time.Second):
			t.Fatal("the page opened no stream within 30s")
		}
	}

	// Stream open, no event yet: connecting, and no "none"/"live" claims.
	waitConnected()
	v := waitFor("stream open", func(v pageView) bool { return v.Stream == "open" })
	if v.State != "connecting…" || v.Leaked != "–" || v.Points != 0 {
		t.Errorf("before the first event: %+v", v)
	}
	if v.AutoTile != "–" {
		t.Errorf("before the first event, the auto tile shows %q", v.AutoTile)
	}
	for _, r := range append(append(v.Leaks, v.Holders...), v.Auto...) {
		if len(r) != 1 || r[0] != "waiting for the first stats event…" {
			t.Errorf("before the first event, a table shows %q", r)
		}
	}

	one := sample{
		T: time.Now().UnixMilli(), Total: 4, InUse: 3, LongLived: 2, Leaked: 1, LeaksReported: 1,
		Leaks: []leakView{{ConnID: 7, Kind: "conn", Owner: "billing", Site: "report.go:42 billing.(*Job).Run", HeldForMs: 125_000, MaxHoldMs: 2000}},
		Holders: []holderGroup{
			{Kind: "conn", Owner: "billing", Count: 1, Leaked: 1, MaxHeldMs: 125_000},
			{Kind: "pubsub", Owner: "sse", Count: 2, LongLived: true, MaxHeldMs: 3_780_000},
			{Kind: "command", Count: 3, MaxHeldMs: 1500},
		},
		Jobs:       jobTotals{Signups: 1, Completed: 1, Failed: 1, AttemptsFailed: 1, Expired: 1},
		SSEClients: 1, Keyspace: "on: counts expired sessions",
	}
	send(one)
	v = waitFor("first event", func(v pageView) bool { return v.Points == 1 })
	if v.State != "live" || v.Leaked != "1" {
		t.Errorf("after the first event: state %q, leaked %q", v.State, v.Leaked)
	}
	wantLeaks := [][]string{{"#7", "conn", "billing", "2m 5s / 2.0s", "report.go:42 billing.(*Job).Run"}}
	wantHolders := [][]string{
		{"leaked", "conn", "billing", "1 connection", "2m 5s"},
		{"long-lived", "pubsub", "sse", "2 connections", "1h 3m"},
		{"in use", "command", "—", "3 connections", "1.5s"},
	}
	if fmt.Sprint(v.Leaks) != fmt.Sprint(wantLeaks) {
		t.Errorf("leaks table %q, want %q", v.Leaks, wantLeaks)
	}
	if fmt.Sprint(v.Holders) != fmt.Sprint(wantHolders) {
		t.Errorf("holders table %q, want %q", v.Holders, wantHolders)
	}
	checkFacts(t, v, "1 SSE client", "1 signup", "1 e-mail sent", "1 job failed (1 attempt retried)", "1 session expired")
	// Automatic detection off: said so, not "none".
	if want := [][]string{{"automatic detection off (run with -auto-long-lived)"}}; fmt.Sprint(v.Auto) != fmt.Sprint(want) || v.AutoTile != "off" || !v.VerdictHidden {
		t.Errorf("auto section %q, tile %q, verdict hidden %v; want %q, off, hidden", v.Auto, v.AutoTile, v.VerdictHidden, want)
	}

	two := one
	two.T += 500
	two.Leaks = []leakView{}
	two.Leaked = 0
	two.Holders = []holderGroup{{Kind: "conn", Owner: "sse", Count: 1, LongLived: true, By: "mark", MaxHeldMs: 90_000}, {Kind: "conn", Count: 1, MaxHeldMs: 45_000}}
	two.Jobs = jobTotals{Signups: 2, Completed: 0, Failed: 2, AttemptsFailed: 3, Expired: 0}
	two.SSEClients = 2
	two.AutoDetection, two.AutoHolders = true, []autoView{}
	send(two)
	v = waitFor("second event", func(v pageView) bool { return v.Points == 2 })
	wantHolders = [][]string{{"long-lived · mark", "conn", "sse", "1 connection", "90s"}, {"in use", "conn", "—", "1 connection", "45s"}}
	if fmt.Sprint(v.Holders) != fmt.Sprint(wantHolders) || fmt.Sprint(v.Leaks) != fmt.Sprint([][]string{{"none"}}) {
		t.Errorf("tables %q and %q, want %q and no leak", v.Holders, v.Leaks, wantHolders)
	}
	checkFacts(t, v, "2 SSE clients", "2 signups", "0 e-mails sent", "2 jobs failed (3 attempts retried)", "0 sessions expired")
	// Automatic detection on, nothing detected: "none", not "off".
	if want := [][]string{{"automatic detection on: no holder is long-lived by behaviour right now"}}; fmt.Sprint(v.Auto) != fmt.Sprint(want) || v.AutoTile != "0" || !v.VerdictHidden {
		t.Errorf("auto section %q, tile %q, verdict hidden %v; want %q, 0, hidden", v.Auto, v.AutoTile, v.VerdictHidden, want)
	}

	// The stream drops: "reconnecting…" until the next event, even once
	// the new stream is open.
	stream.end <- struct{}{}
	waitFor("reconnecting", func(v pageView) bool { return v.State == "reconnecting…" })
	waitConnected()
	v = waitFor("stream reopened", func(v pageView) bool { return v.Stream == "open" })
	if v.State != "reconnecting…" {
		t.Errorf("reopened stream before any event: state %q", v.State)
	}
	// Holders detected by behaviour, and (the naive mode) the tracker's
	// own verdict beside the naive one.
	three := two
	three.T += 500
	three.AutoLongLived = 2
	three.AutoHolders = []autoView{
		{ConnID: 5, Kind: "conn", Owner: "keyspace", Site: "config.go:62 keyspace.(*nodeConfig).serverVersion", HeldForMs: 6000, IdleForMs: 980, Hint: autoHint},
		{ConnID: 9, Kind: "conn", HeldForMs: 185_000, IdleForMs: 40, Hint: autoHint},
	}
	three.Holders = []holderGroup{{Kind: "conn", Owner: "keyspace", Count: 1, LongLived: true, By: "auto", MaxHeldMs: 6000}}
	three.Tracker = &verdict{LongLived: 5, AutoLongLived: 2, Leaked: 1, LeaksReported: 1}
	send(three)
	v = waitFor("third event", func(v pageView) bool { return v.Points == 3 })
	if v.State != "live" {
		t.Errorf("after an event on the new stream: state %q", v.State)
	}
	wantAuto := [][]string{
		{"#5", "conn", "keyspace", "6.0s", "1.0s", "config.go:62 keyspace.(*nodeConfig).serverVersion\n" + autoHint},
		{"#9", "conn", "—", "3m 5s", "0.0s", "unknown\n" + autoHint},
	}
	if fmt.Sprint(v.Auto) != fmt.Sprint(wantAuto) || v.AutoTile != "2" {
		t.Errorf("auto section %q, tile %q; want %q, 2", v.Auto, v.AutoTile, wantAuto)
	}
	if want := "The tracker's own verdict, beside the naive detector's above: 5 long-lived (2 by behaviour), 1 leaked, 1 leak reported."; v.VerdictHidden || v.Verdict != want {
		t.Errorf("verdict %q (hidden %v), want %q", v.Verdict, v.VerdictHidden, want)
	}
	if want := [][]string{{"long-lived · auto", "conn", "keyspace", "1 connection", "6.0s"}}; fmt.Sprint(v.Holders) != fmt.Sprint(want) {
		t.Errorf("holders %q, want %q", v.Holders, want)
	}
}
