package sse

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
)

// proxyInstanceEnv makes the test binary an SSE instance for
// TestBehindNginx: "<listen addr> <redis addr> <namespace>".
const proxyInstanceEnv = "SSE_TEST_PROXY_INSTANCE"

// TestProxyInstanceHelper is not a test: run by TestBehindNginx as a
// separate process (so that it can be killed with SIGKILL), it serves
// /events with a Manager until its stdin closes.
func TestProxyInstanceHelper(t *testing.T) {
	spec := os.Getenv(proxyInstanceEnv)
	if spec == "" {
		t.Skip("helper process of TestBehindNginx")
	}
	f := strings.Fields(spec)
	rdb := redis.NewClient(&redis.Options{Addr: f[1], MaintNotificationsConfig: redistest.NoMaintNotifications()})
	defer rdb.Close()
	m, err := NewManager(rdb, Options{Namespace: f[2], Heartbeat: 200 * time.Millisecond, Retry: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /events", m)
	srv := &http.Server{Addr: f[0], Handler: mux}
	srv.RegisterOnShutdown(func() { _ = m.Close(context.Background()) })
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); _ = srv.Shutdown(context.Background()) }()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		t.Fatal(err)
	}
}

// instance is one SSE server process behind nginx.
type instance struct {
	t    *testing.T
	addr string
	spec string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  bytes.Buffer
}

func newInstance(t *testing.T, redisAddr, ns string) *instance {
	port, err := redistest.FreePort(false)
	if err != nil {
		t.Fatal(err)
	}
	in := &instance{t: t, addr: "127.0.0.1:" + strconv.Itoa(port)}
	in.spec = in.addr + " " + redisAddr + " " + ns
	t.Cleanup(in.kill)
	return in
}

// start starts the process and waits until it accepts connections.
func (in *instance) start() {
	in.t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestProxyInstanceHelper$")
	cmd.Env = append(os.Environ(), proxyInstanceEnv+"="+in.spec)
	cmd.Stdout, cmd.Stderr = &in.out, &in.out
	if _, err := cmd.StdinPipe(); err != nil {
		in.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		in.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	in.mu.Lock()
	in.cmd, in.done = cmd, done
	in.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", in.addr, 200*time.Millisecond); err == nil {
			_ = c.Close()
			return
		}
		select {
		case <-done:
			in.t.Fatalf("instance %s exited at start: %s", in.addr, in.out.String())
		default:
		}
		if time.Now().After(deadline) {
			in.t.Fatalf("instance %s did not accept within 60s", in.addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (in *instance) output() string {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.cmd != nil {
		return "(running)"
	}
	return in.out.String()
}

// kill kills the process with SIGKILL (no Close, no goodbye) and waits.
func (in *instance) kill() {
	in.mu.Lock()
	cmd, done := in.cmd, in.done
	in.cmd = nil
	in.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// readmeNginx returns the nginx block of README.md's "Deploying behind a
// proxy" section.
func readmeNginx(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "## Deploying behind a proxy")
	if !ok {
		t.Fatal(`README.md has no "Deploying behind a proxy" section`)
	}
	m := regexp.MustCompile("(?s)```nginx\n(.*?)```").FindStringSubmatch(sec)
	if m == nil {
		t.Fatal("no nginx block in README.md's proxy section")
	}
	return m[1]
}

// TestBehindNginx: two instances behind a real nginx configured as
// README.md says (the block is read from there), a browser and a Node
// client subscribed through it, events published all along; each instance
// is killed (SIGKILL) and restarted in turn, then both at once. Both
// clients receive every event once, in order, with no reset, and neither
// EventSource ever gives up.
func TestBehindNginx(t *testing.T) {
	redistest.Chromium(t)
	redisAddr := redistest.Addr(t)
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr, MaintNotificationsConfig: redistest.NoMaintNotifications()})
	t.Cleanup(func() { _ = rdb.Close() })
	ns := testNamespace(t)
	pub, _ := startManager(t, rdb, Options{Namespace: ns})

	a, b := newInstance(t, redisAddr, ns), newInstance(t, redisAddr, ns)
	a.start()
	b.start()

	page := http.NewServeMux()
	browser := servePage(page)
	pageSrv := httptest.NewServer(page)
	t.Cleanup(pageSrv.Close)
	pageAddr := strings.TrimPrefix(pageSrv.URL, "http://")

	conf := readmeNginx(t)
	ngx := redistest.StartNginx(t, func(port int) string {
		c := strings.ReplaceAll(conf, "127.0.0.1:8081", a.addr)
		c = strings.ReplaceAll(c, "127.0.0.1:8082", b.addr)
		c = strings.Replace(c, "listen 80;", fmt.Sprintf("listen 127.0.0.1:%d;", port), 1)
		// The test page and its reports, from the same origin.
		return strings.Replace(c, "    location /events {", fmt.Sprintf(
			"    location = / { proxy_pass http://%[1]s; }\n    location = /report { proxy_pass http://%[1]s; }\n\n    location /events {", pageAddr), 1)
	})
	base := "http://" + ngx.Addr
	defer func() {
		if t.Failed() {
			t.Logf("nginx error log:\n%s", ngx.Log())
			t.Logf("instance a:\n%s\ninstance b:\n%s", a.output(), b.output())
		}
	}()

	// Publish 20 events/s until told to stop.
	var pubMu sync.Mutex
	var want []string
	stopPub := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stopPub:
				return
			case <-tick.C:
			}
			data := fmt.Sprintf("p %d", i)
			id, err := pub.Publish(context.Background(), "p", Event{Data: data})
			if err != nil {
				t.Errorf("Publish: %v", err)
				return
			}
			pubMu.Lock()
			want = append(want, id+" "+data)
			pubMu.Unlock()
		}
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			close(stopPub)
			<-pubDone
		}
	}
	defer stop()

	node := watchNode(t, base+"/events?topic=p")
	startChromium(t, base+"/?topic=p")
	redistest.WaitFor(t, 60*time.Second, "both clients to receive events", func() bool {
		nb, _, _ := browser.snapshot()
		nn, _, _ := node.snapshot()
		return len(nb) > 0 && len(nn) > 0
	})

	// A rolling deploy by SIGKILL: one instance, then the other, then both.
	pause := func() { time.Sleep(1500 * time.Millisecond) }
	a.kill()
	pause()
	a.start()
	pause()
	b.kill()
	pause()
	b.start()
	pause()
	a.kill()
	b.kill()
	pause()
	a.start()
	b.start()
	// Reconnections through nginx's fallback wait 3 s (its retry hint).
	time.Sleep(4 * time.Second)
	stop()

	pubMu.Lock()
	wanted := append([]string(nil), want...)
	pubMu.Unlock()
	last := wanted[len(wanted)-1]
	// Wait for the last event (then compare); a client that gave up
	// never gets it.
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if browser.has(last) && node.has(last) {
			break
		}
	}
	bSeen, bErrors, bOpens := browser.snapshot()
	nSeen, nErrors, nOpens := node.snapshot()
	t.Logf("%d events published (from before the clients connected); browser: %d received, %d opens, errors (readyState) %v; node: %d received, %d opens, errors %v",
		len(wanted), len(bSeen), bOpens, bErrors, len(nSeen), nOpens, nErrors)
	for _, c := range []struct {
		name   string
		seen   []string
		errors []int
	}{{"browser", bSeen, bErrors}, {"node", nSeen, nErrors}} {
		if len(c.seen) == 0 {
			t.Errorf("%s: received nothing", c.name)
			continue
		}
		// Publishing started before the clients connected: from the
		// first event a client received on, it must have every one.
		from := slices.Index(wanted, c.seen[0])
		if from < 0 {
			t.Errorf("%s: first event %q was not published", c.name, c.seen[0])
			continue
		}
		if w := wanted[from:]; strings.Join(c.seen, "|") != strings.Join(w, "|") {
			t.Errorf("%s: received %d events, want %d: %s", c.name, len(c.seen), len(w), firstDiff(c.seen, w))
		}
		for _, s := range c.errors {
			if s == 2 {
				t.Errorf("%s: EventSource closed for good (readyState 2)", c.name)
				break
			}
		}
	}
}

// firstDiff describes where got and want first differ.
func firstDiff(got, want []string) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("at %d: %q, want %q", i, got[i], want[i])
		}
	}
	if len(got) < len(want) {
		return fmt.Sprintf("missing from %d: %q", len(got), want[len(got)])
	}
	if len(got) > len(want) {
		return fmt.Sprintf("extra from %d: %q", len(want), got[len(want)])
	}
	return "same"
}
