package sse

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/redisleak/redisleak"
)

// TestTrackerSeesNoLeaks: a running manager with the tracker attached shows
// no leaks: its subscriber and command connections, held far beyond
// MaxHold while clients are connected, are long-lived holds owned by "sse".
func TestTrackerSeesNoLeaks(t *testing.T) {
	rdb := redisClient(t)
	tr, err := redisleak.Instrument(rdb, redisleak.Options{
		MaxHold:      300 * time.Millisecond,
		ScanInterval: 50 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	m, srv := startManager(t, rdb, Options{Heartbeat: 100 * time.Millisecond})
	var streams []*stream
	for _, q := range []string{"?topic=a", "?topic=a&topic=b", "?topic=b"} {
		s := open(t, srv.URL+q, nil)
		s.ready(t)
		streams = append(streams, s)
	}
	// Traffic and a replay, so the pools are used too.
	first := publish(t, m, "a", "", "1")
	publish(t, m, "b", "", "2")
	r := open(t, srv.URL+"?topic=b&lastEventId="+first, nil)
	r.ready(t)
	if e := r.next(t); e.Data != "2" {
		t.Fatalf("replay got %+v", e)
	}
	// Hold for well over MaxHold with the clients connected.
	deadline := time.Now().Add(900 * time.Millisecond)
	for _, s := range streams {
		for time.Now().Before(deadline) {
			s.nextBlock(t) // heartbeats
		}
	}
	if leaks := tr.Scan(); len(leaks) != 0 {
		t.Fatalf("leaks: %v", leaks)
	}
	st := tr.Stats()
	if st.LongLived < 1 || st.Leaked != 0 {
		t.Fatalf("tracker stats %+v", st)
	}
	owned := 0
	for _, h := range tr.Holds() {
		if h.Owner == owner && h.LongLived {
			owned++
		}
	}
	if owned < 2 {
		t.Fatalf("want the subscriber and the command connection as long-lived holds of %q; holds: %v", owner, tr.Holds())
	}
	t.Logf("tracker: %d long-lived, %d in use, holds owned by sse: %d", st.LongLived, st.InUse, owned)
}
