package redisleak_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

// Over TLS the dial hook receives go-redis's *tls.Conn: the wrapper keeps it
// working, and holds and sites are tracked as over plain TCP.
func TestTLS(t *testing.T) {
	srv, tlsConf := redistest.TLSServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, TLSConfig: tlsConf, MaintNotificationsConfig: redistest.NoMaintNotifications()})
	defer rdb.Close()
	checkTransport(t, rdb, srv.Addr)
}

// Over a Unix socket the dial hook receives a *net.UnixConn (a
// syscall.Conn that is not TCP): the wrapper keeps it working, and holds,
// blocking commands and sites are tracked as over TCP.
func TestUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "redis.sock")
	redistest.Private(t, redistest.PrivateOptions{Args: []string{"--unixsocket", sock, "--unixsocketperm", "700"}})
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: sock, MaintNotificationsConfig: redistest.NoMaintNotifications()})
	defer rdb.Close()
	checkTransport(t, rdb, sock)
}

// checkTransport instruments rdb (MaxHold 150 ms, no background scan),
// runs commands and opens a subscriber through it, and checks: a BLPOP
// within its timeout is a blocking hold, not a leak; a Conn never closed
// is one leak, at its site, on addr.
func checkTransport(t *testing.T, rdb *redis.Client, addr string) {
	t.Helper()
	tr, err := redisleak.Instrument(rdb, redisleak.Options{MaxHold: 150 * time.Millisecond, ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for i := 0; i < 10; i++ {
		if err := rdb.Set(bg, "k", i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	ps := rdb.Subscribe(bg, "x")
	defer ps.Close()
	if _, err := ps.Receive(bg); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rdb.BLPop(bg, time.Second, "transport:empty").Err() }()
	redistest.WaitFor(t, 5*time.Second, "the BLPOP to be held", func() bool {
		for _, h := range tr.Holds() {
			if h.Kind == redisleak.KindBlocking {
				return true
			}
		}
		return false
	})
	c := leakyConn(bg, rdb)
	defer c.Close()
	time.Sleep(200 * time.Millisecond) // both past MaxHold
	l := onlyLeak(t, scanUntil(t, tr, 1))
	assertSite(t, l, "leakyConn")
	if l.Addr != addr || l.Kind != redisleak.KindConn {
		t.Fatalf("leak %s: addr %q, want %q", l, l.Addr, addr)
	}
	s := tr.Stats()
	if s.LongLived != 2 || s.Total != s.Idle+s.InUse {
		t.Fatalf("stats %+v, want the subscriber and the BLPOP long-lived", s)
	}
	if err := <-done; err != redis.Nil {
		t.Fatalf("BLPOP: %v", err)
	}
}
