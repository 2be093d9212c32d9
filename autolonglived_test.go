package redisleak_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

// busyConn runs a GET every 50 ms on a Conn until stop is closed; the
// returned function waits for the loop to end and closes the Conn.
func busyConn(ctx context.Context, rdb *redis.Client, stop <-chan struct{}) func() {
	c := rdb.Conn()
	c.Get(ctx, "k")
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				c.Get(ctx, "k")
			}
		}
	}()
	return func() { <-done; _ = c.Close() }
}

const autoMax = 300 * time.Millisecond

func autoSetup(t *testing.T, auto bool, ro ...func(*redis.Options)) (*redis.Client, *redisleak.Tracker, *logBuffer) {
	return setup(t, redisleak.Options{MaxHold: autoMax, AutoLongLived: auto}, ro...)
}

// A Conn running a GET every 50 ms for 3x MaxHold, unmarked: never reported
// with AutoLongLived, reported once without it.
func TestAutoLongLivedBusyConn(t *testing.T) {
	for _, auto := range []bool{true, false} {
		rdb, tr, logs := autoSetup(t, auto)
		stop := make(chan struct{})
		end := busyConn(bg, rdb, stop)
		var reported int
		for end := time.Now().Add(3 * autoMax); time.Now().Before(end); time.Sleep(25 * time.Millisecond) {
			reported = len(tr.Scan())
		}
		s := tr.Stats()
		close(stop)
		end()
		if auto {
			if reported != 0 || s.LeaksReported != 0 {
				t.Fatalf("auto: busy Conn reported: %+v", s)
			}
			if s.AutoLongLived != 1 || s.LongLived != 1 {
				t.Fatalf("auto: stats %+v", s)
			}
			if !containsAll(logs.String(), "classified long-lived by behaviour") {
				t.Fatalf("auto: no WARN on classification: %s", logs)
			}
		} else if s.LeaksReported != 1 {
			t.Fatalf("age rule: busy Conn reported %d times", s.LeaksReported)
		}
	}
}

// A forgotten Conn is reported within MaxHold + ScanInterval of its last
// command, with IdleFor >= MaxHold; busy then forgotten likewise.
func TestAutoLongLivedForgottenConn(t *testing.T) {
	const scanEvery = 50 * time.Millisecond
	rdb, tr, _ := setup(t, redisleak.Options{MaxHold: autoMax, AutoLongLived: true, ScanInterval: scanEvery})
	var leaks []redisleak.Leak
	got := make(chan redisleak.Leak, 4)
	_ = leaks
	// one command, then nothing
	lastCmd := time.Now()
	c := leakyConn(bg, rdb)
	defer c.Close()
	var l redisleak.Leak
	redistest.WaitFor(t, 5*time.Second, "the forgotten Conn", func() bool {
		for _, x := range tr.Scan() {
			l = x
			return true
		}
		return false
	})
	if d := time.Since(lastCmd); d > autoMax+scanEvery+250*time.Millisecond {
		t.Fatalf("reported %v after its last command", d)
	}
	if l.IdleFor < autoMax || l.Kind != redisleak.KindConn {
		t.Fatalf("leak %s (IdleFor %v)", l, l.IdleFor)
	}
	_ = got
	// busy for 3x MaxHold, then forgotten
	stop := make(chan struct{})
	endB := busyConn(bg, rdb, stop)
	for end := time.Now().Add(3 * autoMax); time.Now().Before(end); time.Sleep(25 * time.Millisecond) {
		for _, x := range tr.Scan() {
			if x.ConnID != l.ConnID {
				t.Fatalf("busy Conn reported while busy: %s", x)
			}
		}
	}
	close(stop)
	quiet := time.Now()
	var bl redisleak.Leak
	redistest.WaitFor(t, 5*time.Second, "busy-then-forgotten Conn", func() bool {
		for _, x := range tr.Scan() {
			if x.ConnID != l.ConnID {
				bl = x
				return true
			}
		}
		return false
	})
	if d := time.Since(quiet); d < autoMax-60*time.Millisecond {
		t.Fatalf("reported %v after going quiet, before its threshold", d)
	}
	if bl.IdleFor < autoMax-60*time.Millisecond || bl.HeldFor < 3*autoMax {
		t.Fatalf("leak %s", bl)
	}
	endB()
}

// A Watch callback blocked after one command is reported; a command stuck
// past MaxHold is reported, kind command; a BLPOP worker loop on a Conn is
// never reported; marked and subscriber holds say why they are exempt.
func TestAutoLongLivedKinds(t *testing.T) {
	srv := redistest.Private(t, redistest.PrivateOptions{Args: []string{"--enable-debug-command", "yes"}})
	rdb := srv.Client(func(o *redis.Options) { o.ReadTimeout = -1 })
	tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: autoMax, AutoLongLived: true, ScanInterval: time.Hour, Logger: (&logBuffer{}).logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()

	// Watch blocked on a channel after one command.
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- blockInWatch(bg, rdb, release) }()
	l := onlyLeak(t, scanUntil(t, tr, 1))
	if l.Kind != redisleak.KindTx {
		t.Fatalf("watch: %s", l)
	}
	close(release)
	<-done

	// A stuck command (DEBUG SLEEP) past MaxHold.
	go func() { done <- sleepOnServer(bg, rdb, "1") }()
	var stuck redisleak.Leak
	redistest.WaitFor(t, 5*time.Second, "the stuck command", func() bool {
		for _, x := range tr.Scan() {
			if x.Kind == redisleak.KindCommand {
				stuck = x
				return true
			}
		}
		return false
	})
	if !stuck.Leaked || stuck.IdleFor != 0 || !strings.Contains(stuck.Site, "sleepOnServer") {
		t.Fatalf("stuck command: %s (IdleFor %v)", stuck, stuck.IdleFor)
	}
	<-done

	// An unmarked BLPOP worker loop with a 1 s timeout, forever.
	stop := make(chan struct{})
	w := rdb.Conn()
	defer w.Close()
	loop := make(chan struct{})
	go func() {
		defer close(loop)
		for {
			select {
			case <-stop:
				return
			default:
			}
			w.BLPop(bg, time.Second, "redisleak:test:queue")
		}
	}()
	// marked Conn, subscriber
	m := rdb.Conn()
	defer m.Close()
	m.Ping(redisleak.WithLongLived(bg))
	ps := rdb.Subscribe(bg, "news")
	defer ps.Close()
	if _, err := ps.Receive(bg); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(3 * autoMax); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		for _, x := range tr.Scan() {
			if x.HeldFor > 0 && x.Kind != redisleak.KindCommand {
				t.Fatalf("reported: %s", x)
			}
		}
	}
	by := map[string]bool{}
	for _, h := range tr.Holds() {
		by[h.LongLivedBy] = true
	}
	if !by[redisleak.LongLivedMark] || !by[redisleak.LongLivedPubSub] {
		t.Fatalf("exemption reasons %v", by)
	}
	// The health JSON lists holders detected by behaviour.
	stop2 := make(chan struct{})
	endBC := busyConn(bg, rdb, stop2)
	time.Sleep(autoMax + 100*time.Millisecond)
	rec := httptest.NewRecorder()
	tr.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	var body struct {
		Auto []map[string]any `json:"autoLongLived"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if len(body.Auto) == 0 || body.Auto[0]["hint"] == nil {
		t.Fatalf("health JSON: %s", rec.Body)
	}
	close(stop2)
	endBC()
	close(stop)
	rdb.RPush(bg, "redisleak:test:queue", "x")
	<-loop
}

func containsAll(s string, subs ...string) bool {
	for _, x := range subs {
		if !strings.Contains(s, x) {
			return false
		}
	}
	return true
}
