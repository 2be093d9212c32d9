package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redisleak/redisleak"
)

// TestNaiveDetector: the age rule alone, whatever the tracker's verdict;
// each hold reported once.
func TestNaiveDetector(t *testing.T) {
	var buf bytes.Buffer
	d := newNaiveDetector(2*time.Second, slog.New(slog.NewTextHandler(&buf, nil)))
	at := time.Unix(1000, 0)
	holds := []redisleak.Leak{
		{ConnID: 1, Owner: "sse", Site: "manager.go:1 sse.NewManager", AcquiredAt: at, HeldFor: 5 * time.Second, LongLived: true},
		{ConnID: 2, AcquiredAt: at, HeldFor: 3 * time.Second, MaxHold: 2 * time.Second, Leaked: true},
		{ConnID: 3, AcquiredAt: at, HeldFor: time.Second},
		{ConnID: 4, AcquiredAt: at, HeldFor: 2 * time.Second, LongLived: true}, // not longer than MaxHold
	}
	judged := d.judge(holds)
	for i, want := range []bool{true, true, false, false} {
		if judged[i].Leaked != want || judged[i].LongLived || judged[i].MaxHold != 2*time.Second {
			t.Errorf("hold %d judged %+v, want leaked=%v and never long-lived", i+1, judged[i], want)
		}
	}
	if !holds[0].LongLived {
		t.Errorf("judge changed its input")
	}
	d.scan(holds)
	d.scan(holds) // the same holds: nothing new
	holds[0].AcquiredAt = at.Add(time.Minute)
	d.scan(holds) // connection 1 held again: a new hold
	var ids []uint64
	for _, l := range d.reports() {
		ids = append(ids, l.ConnID)
	}
	if len(ids) != 3 || ids[0] != 1 || ids[1] != 2 || ids[2] != 1 {
		t.Errorf("reported %v, want [1 2 1]", ids)
	}
	if n := strings.Count(buf.String(), "naive detector"); n != 3 || !strings.Contains(buf.String(), `site="manager.go:1 sse.NewManager"`) {
		t.Errorf("%d log lines:\n%s", n, buf.String())
	}
	st := d.stats(redisleak.Stats{Total: 5, InUse: 4, LongLived: 2, Leaked: 1, LeaksReported: 1}, holds)
	if st.Total != 5 || st.InUse != 4 || st.LongLived != 0 || st.Leaked != 2 || st.LeaksReported != 3 {
		t.Errorf("stats %+v", st)
	}
}

func TestDuration(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0.0s"},
		{1500 * time.Millisecond, "1.5s"},
		{90 * time.Second, "90.0s"},
		{90*time.Second + 500*time.Millisecond, "1m 30s"},
		{125 * time.Second, "2m 5s"},
		{time.Hour - time.Millisecond, "59m 59s"},
		{time.Hour + 3*time.Minute + 59*time.Second, "1h 3m"},
		{50 * time.Hour, "50h 0m"},
	} {
		if got := duration(tt.d); got != tt.want {
			t.Errorf("duration(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}
