package redisleak_test

import (
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
	"github.com/redisleak/redisleak/internal/redistest"
)

// blockedFor waits for one blocking hold, lets it outlive MaxHold (150 ms)
// and checks that it is exempt: no leak, one long-lived hold of kind
// blocking.
func assertBlockingExempt(t *testing.T, tr *redisleak.Tracker) {
	t.Helper()
	redistest.WaitFor(t, 5*time.Second, "the blocking hold", func() bool { return tr.Stats().InUse == 1 })
	time.Sleep(400 * time.Millisecond)
	if leaks := tr.Scan(); len(leaks) != 0 {
		t.Fatalf("blocking command within its timeout reported: %v", leaks)
	}
	hs := tr.Holds()
	if len(hs) != 1 || hs[0].Kind != redisleak.KindBlocking {
		t.Fatalf("holds %v, want one of kind blocking", hs)
	}
}

// A BLPOP whose key is 40 KB: go-redis's buffered writer hands it to the
// connection in two writes.
func TestBlockingWithLargeKeyIsRecognised(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{})
	key := strings.Repeat("k", 40<<10)
	done := make(chan error, 1)
	go func() { done <- rdb.BLPop(bg, 5*time.Second, key).Err() }()
	assertBlockingExempt(t, tr)
	rdb.RPush(bg, key, "x")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A pipeline [PING, BLPOP]: the BLPOP is not the first command of the
// write, and PING's reply arrives long before BLPOP's.
func TestBlockingInPipelineIsRecognised(t *testing.T) {
	rdb, tr, _ := setup(t, redisleak.Options{})
	done := make(chan error, 1)
	go func() {
		_, err := rdb.Pipelined(bg, func(p redis.Pipeliner) error {
			p.Ping(bg)
			p.BLPop(bg, 5*time.Second, "q")
			return nil
		})
		done <- err
	}()
	assertBlockingExempt(t, tr)
	rdb.RPush(bg, "q", "x")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Once the blocking command of a pipeline has its reply, the exemption
// ends: a Conn kept afterwards is a leak at MaxHold, not at the BLPOP's
// timeout plus the grace. Inside MULTI a BLPOP does not block and exempts
// nothing.
func TestBlockingExemptionEndsWithItsReply(t *testing.T) {
	for _, tx := range []bool{false, true} {
		name := "pipeline"
		if tx {
			name = "tx"
		}
		t.Run(name, func(t *testing.T) {
			rdb, tr, _ := setup(t, redisleak.Options{})
			rdb.RPush(bg, "q", "x")
			c := rdb.Conn()
			defer c.Close()
			fn := c.Pipelined
			if tx {
				fn = c.TxPipelined
			}
			if _, err := fn(bg, func(p redis.Pipeliner) error {
				p.Ping(bg)
				p.BLPop(bg, time.Minute, "q", "q2")
				p.Ping(bg)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			l := onlyLeak(t, scanUntil(t, tr, 1))
			if l.Kind == redisleak.KindBlocking {
				t.Fatalf("answered blocking command still exempts its connection: %s", l)
			}
		})
	}
}

func TestScanIntervalTooShortIsRejected(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	for _, d := range []time.Duration{time.Nanosecond, time.Millisecond, 9 * time.Millisecond} {
		tr, err := redisleak.Instrument(rdb, redisleak.Options{ScanInterval: d})
		if err == nil {
			tr.Close()
			t.Fatalf("ScanInterval %v accepted", d)
		}
		if !strings.Contains(err.Error(), "ScanInterval") || !strings.Contains(err.Error(), "10ms") {
			t.Fatalf("unclear error: %v", err)
		}
	}
	tr, err := redisleak.Instrument(rdb, redisleak.Options{ScanInterval: redisleak.MinScanInterval})
	if err != nil {
		t.Fatal(err)
	}
	tr.Close()
}
