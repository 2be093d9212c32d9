package redisleak

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redisleak/redisleak/internal/redistest"
)

type fakeM func() int

func (f fakeM) Run() int { return f() }

func TestVerifyTestMain(t *testing.T) {
	srv := redistest.Private(t)
	rdb := srv.Client()
	tr, err := Instrument(rdb, Options{ScanInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var out bytes.Buffer
	if code := verifyTestMain(fakeM(func() int { rdb.Ping(context.Background()); return 0 }), tr, &out, VerifyWait(50*time.Millisecond)); code != 0 {
		t.Fatalf("clean run: exit %d: %s", code, out.String())
	}
	c := rdb.Conn()
	defer c.Close()
	code := verifyTestMain(fakeM(func() int { c.Ping(context.Background()); return 0 }), tr, &out, VerifyWait(50*time.Millisecond))
	if code != 1 || !strings.Contains(out.String(), "1 leaked redis connection") || !strings.Contains(out.String(), "(conn)") {
		t.Fatalf("leaky run: exit %d: %s", code, out.String())
	}
	if code := verifyTestMain(fakeM(func() int { return 3 }), tr, &out); code != 3 {
		t.Fatalf("failing tests: exit %d", code)
	}
}
