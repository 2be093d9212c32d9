package redisleak

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func resp(args ...string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return []byte(b.String())
}

func TestBlockingTimeout(t *testing.T) {
	cases := []struct {
		args    []string
		want    time.Duration
		blocked bool
	}{
		{[]string{"get", "k"}, 0, false},
		{[]string{"blpop", "a", "b", "5"}, 5 * time.Second, true},
		{[]string{"BRPOP", "a", "0.5"}, 500 * time.Millisecond, true},
		{[]string{"blpop", "a", "0"}, blockForever, true},
		{[]string{"brpoplpush", "a", "b", "2"}, 2 * time.Second, true},
		{[]string{"blmove", "a", "b", "left", "right", "3"}, 3 * time.Second, true},
		{[]string{"blmpop", "4", "2", "a", "b", "left", "count", "2"}, 4 * time.Second, true},
		{[]string{"bzmpop", "0", "1", "z", "min"}, blockForever, true},
		{[]string{"bzpopmin", "z", "1.5"}, 1500 * time.Millisecond, true},
		{[]string{"bzpopmax", "z", "1"}, time.Second, true},
		{[]string{"xread", "count", "1", "block", "250", "streams", "s", "$"}, 250 * time.Millisecond, true},
		{[]string{"xread", "block", "0", "streams", "s", "$"}, blockForever, true},
		{[]string{"xread", "streams", "block", "0"}, 0, false}, // "block" is a stream name here
		{[]string{"xreadgroup", "group", "g", "c", "BLOCK", "1000", "streams", "s", ">"}, time.Second, true},
		{[]string{"wait", "1", "100"}, 100 * time.Millisecond, true},
		{[]string{"waitaof", "1", "0", "0"}, blockForever, true},
		{[]string{"bitcount", "k"}, 0, false},
		{[]string{"blpop", "a", "notanumber"}, 0, false},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			got, ok := blockingTimeout(resp(c.args...))
			if ok != c.blocked || got != c.want {
				t.Fatalf("got %v %v, want %v %v", got, ok, c.want, c.blocked)
			}
		})
	}
	// Malformed and truncated input never panics.
	for _, b := range []string{"", "*", "*1\r\n", "*2\r\n$5\r\nblpop\r\n$1", "*9\r\n$5\r\nblpop", "PING\r\n", "*-1\r\n"} {
		blockingTimeout([]byte(b))
	}
}

func FuzzBlockingTimeout(f *testing.F) {
	f.Add(resp("blpop", "a", "1"))
	f.Add(resp("xread", "block", "5", "streams", "s", "0"))
	f.Fuzz(func(t *testing.T, b []byte) {
		blockingTimeout(b)
	})
}

func TestArgsToRESP(t *testing.T) {
	b := argsToRESP([]any{"blpop", "k", int64(2)})
	if d, ok := blockingTimeout(b); !ok || d != 2*time.Second {
		t.Fatalf("%q: %v %v", b, d, ok)
	}
}

func BenchmarkBlockingTimeoutGET(b *testing.B) {
	cmd := resp("get", "some:key")
	for i := 0; i < b.N; i++ {
		blockingTimeout(cmd)
	}
}
