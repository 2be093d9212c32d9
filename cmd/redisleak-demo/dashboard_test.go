package main

import "testing"

func TestIDRing(t *testing.T) {
	r := newIDRing(3)
	if got := r.oldest(); got != "" {
		t.Errorf("empty: %q", got)
	}
	for i, want := range []string{"a", "a", "a", "b", "c"} {
		r.add(string(rune('a' + i)))
		if got := r.oldest(); got != want {
			t.Errorf("after %d adds: oldest %q, want %q", i+1, got, want)
		}
	}
}
