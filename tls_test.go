package redisleak_test

import (
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
	c := leakyConn(bg, rdb)
	defer c.Close()
	l := onlyLeak(t, scanUntil(t, tr, 1))
	assertSite(t, l, "leakyConn")
	if l.Addr != srv.Addr {
		t.Fatalf("addr %q", l.Addr)
	}
	s := tr.Stats()
	if s.LongLived != 1 || s.Total != s.Idle+s.InUse {
		t.Fatalf("stats %+v", s)
	}
}
