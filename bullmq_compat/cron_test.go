package bullmq

import (
	"testing"
	"time"
)

func TestNextCron(t *testing.T) {
	base := time.Date(2026, 11, 26, 10, 15, 30, 500e6, time.UTC) // a Thursday
	for _, tc := range []struct {
		pattern, want string
	}{
		{"*/1 * * * * *", "2026-11-26T10:15:31Z"},
		{"* * * * *", "2026-11-26T10:16:00Z"},
		{"0 12 * * *", "2026-11-26T12:00:00Z"},
		{"0 9 * * *", "2026-11-27T09:00:00Z"},
		{"*/20 * * * *", "2026-11-26T10:20:00Z"},
		{"0 0 1 * *", "2026-12-01T00:00:00Z"},
		{"0 0 * * MON", "2026-11-30T00:00:00Z"},
		{"0 0 * * 7", "2026-11-29T00:00:00Z"},
		{"0 0 1 JAN *", "2027-01-01T00:00:00Z"},
		{"30 10-12/2 * * *", "2026-11-26T10:30:00Z"},
		{"0 11-13/2 * * *", "2026-11-26T11:00:00Z"},
		{"0 0 13 * FRI", "2026-11-27T00:00:00Z"}, // day-of-month OR day-of-week
		{"15,45 * * * * *", "2026-11-26T10:15:45Z"},
		{"0 0 29 2 *", "2028-02-29T00:00:00Z"},
	} {
		got, err := nextCron(tc.pattern, "UTC", base)
		if err != nil {
			t.Errorf("%q: %v", tc.pattern, err)
			continue
		}
		if s := got.UTC().Format(time.RFC3339); s != tc.want {
			t.Errorf("%q: next = %s, want %s", tc.pattern, s, tc.want)
		}
	}
	got, err := nextCron("0 9 * * *", "Europe/Paris", base)
	if err != nil || got.UTC().Format(time.RFC3339) != "2026-11-27T08:00:00Z" {
		t.Errorf("tz: %v, %v", got, err)
	}
	for _, bad := range []string{"", "* * *", "61 * * * *", "* * * * 8", "L * * * *", "*/0 * * * *", "5-1 * * * *"} {
		if _, err := nextCron(bad, "UTC", base); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if _, err := nextCron("* * * * *", "Nowhere/City", base); err == nil {
		t.Error("unknown time zone: no error")
	}
}

func TestLegacyRepeatKeyShape(t *testing.T) {
	for key, want := range map[string]bool{
		"every-1": false, "cron-1": false, "a:b:c": false,
		"name:id::UTC:1000": true, "name:id:1700000000000::*/5 * * * *": true,
		"name:id:x:UTC:1000": false, "name:id::tz:abc": false,
	} {
		if got := hasLegacyRepeatKeyShape(key); got != want {
			t.Errorf("%q: %v, want %v", key, got, want)
		}
	}
}
