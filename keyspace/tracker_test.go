package keyspace

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

// TestTrackerSeesNoLeaks: a running manager with the tracker attached shows
// no leaks. Its subscriber and config connections are held far beyond
// MaxHold, as long-lived holds owned by "keyspace"; the handler's own
// commands are ordinary holds.
func TestTrackerSeesNoLeaks(t *testing.T) {
	tests := []struct {
		name   string
		client func(t *testing.T) (redis.UniversalClient, int)
	}{
		{"client", func(t *testing.T) (redis.UniversalClient, int) { return redistest.Private(t).Client(), 1 }},
		{"cluster", func(t *testing.T) (redis.UniversalClient, int) { return redistest.NewCluster(t, 3).Client(t), 3 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb, nodes := tt.client(t)
			tr, err := redisleak.Instrument(rdb, redisleak.Options{
				MaxHold:      300 * time.Millisecond,
				ScanInterval: 50 * time.Millisecond,
				Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			ctx := context.Background()
			rec := newRecorder()
			startManager(t, rdb, Options{Flags: "K$"}, func(m *Manager) {
				m.Handle("t:*", func(ev Event) {
					// A handler's own commands use its (unmarked) context.
					rdb.Get(ev.Context(), ev.Key)
					rec.handle(ev)
				})
			})
			// Hold for well over MaxHold, with traffic.
			deadline := time.Now().Add(900 * time.Millisecond)
			for i := 0; time.Now().Before(deadline); i++ {
				key := "t:" + time.Now().Format("150405.000000")
				if err := rdb.Set(ctx, key, i, 0).Err(); err != nil {
					t.Fatal(err)
				}
				rec.until(t, key, EventSet)
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
				if h.Owner == Owner && h.LongLived {
					owned++
				}
			}
			// Per node: the subscriber and the config connection.
			if owned < 2*nodes {
				t.Errorf("%d long-lived holds owned by %q, want %d; holds: %v", owned, Owner, 2*nodes, tr.Holds())
			}
			t.Logf("tracker: %d long-lived, %d in use, long-lived holds owned by keyspace: %d", st.LongLived, st.InUse, owned)
		})
	}
}
