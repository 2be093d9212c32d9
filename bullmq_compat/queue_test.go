package bullmq

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// backends runs f on miniredis and on a real Redis.
func backends(t *testing.T, f func(t *testing.T, rdb *redis.Client, queue string)) {
	t.Run("miniredis", func(t *testing.T) {
		rdb, _ := miniClient(t)
		f(t, rdb, uniqueQueue(t))
	})
	t.Run("redis", func(t *testing.T) {
		rdb, q := realClient(t)
		f(t, rdb, q)
	})
}

func queueKeys(t *testing.T, rdb *redis.Client, q *Queue) []string {
	t.Helper()
	ks, err := rdb.Keys(context.Background(), q.Key("*")).Result()
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func TestNewQueueRejectsBadInput(t *testing.T) {
	rdb, _ := miniClient(t)
	for _, tc := range []struct {
		name  string
		rdb   redis.UniversalClient
		queue string
		opts  QueueOptions
	}{
		{"empty name", rdb, "", QueueOptions{}},
		{"colon in name", rdb, "a:b", QueueOptions{}},
		{"nil client", nil, "q", QueueOptions{}},
		{"negative depth", rdb, "q", QueueOptions{MaxQueueDepth: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewQueue(tc.rdb, tc.queue, tc.opts); !errors.Is(err, ErrInvalidOptions) {
				t.Fatalf("err = %v, want ErrInvalidOptions", err)
			}
		})
	}
}

func TestAddRejectsBadInputWritingNothing(t *testing.T) {
	backends(t, func(t *testing.T, rdb *redis.Client, name string) {
		q, err := NewQueue(rdb, name, QueueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		for _, tc := range []struct {
			name string
			data any
			opts JobOptions
			want error
		}{
			{"unencodable data", func() {}, JobOptions{}, ErrInvalidOptions},
			{"NaN data", math.NaN(), JobOptions{}, ErrInvalidOptions},
			{"invalid raw JSON", json.RawMessage(`{"a":`), JobOptions{}, ErrInvalidOptions},
			{"priority too high", 1, JobOptions{Priority: MaxPriority + 1}, ErrInvalidOptions},
			{"jitter above 1", 1, JobOptions{Backoff: Backoff{Delay: time.Second, Jitter: 1.5}}, ErrInvalidOptions},
			{"two parent-on-failure options", 1, JobOptions{FailParentOnFailure: true, IgnoreDependencyOnFailure: true}, ErrInvalidOptions},
			{"deduplication without id", 1, JobOptions{Deduplication: &Deduplication{TTL: time.Second}}, ErrInvalidOptions},
			{"id 0", 1, JobOptions{JobID: "0"}, ErrInvalidJobID},
			{"id 0:x", 1, JobOptions{JobID: "0:x"}, ErrInvalidJobID},
			{"integer id", 1, JobOptions{JobID: "42"}, ErrInvalidJobID},
			{"negative integer id", 1, JobOptions{JobID: "-7"}, ErrInvalidJobID},
			{"two-part id", 1, JobOptions{JobID: "a:b"}, ErrInvalidJobID},
			{"four-part id", 1, JobOptions{JobID: "a:b:c:d"}, ErrInvalidJobID},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if _, err := q.Add(ctx, "x", tc.data, tc.opts); !errors.Is(err, tc.want) {
					t.Fatalf("err = %v, want %v", err, tc.want)
				}
				if ks := queueKeys(t, rdb, q); len(ks) != 0 {
					t.Fatalf("keys written: %v", ks)
				}
			})
		}
		// A bad job in a bulk keeps the good ones out too.
		_, err = q.AddBulk(ctx, []BulkJob{{Name: "ok", Data: 1}, {Name: "bad", Data: 1, Opts: JobOptions{Priority: MaxPriority + 1}}})
		if !errors.Is(err, ErrInvalidOptions) {
			t.Fatalf("AddBulk err = %v", err)
		}
		if ks := queueKeys(t, rdb, q); len(ks) != 0 {
			t.Fatalf("keys written by a rejected bulk: %v", ks)
		}
	})
}

func TestValidateJobIDFollowsNode(t *testing.T) {
	for id, ok := range map[string]bool{
		"": true, "abc": true, "007": true, "1e3": true, "+5": true, "-0": true, "1.5": true,
		"repeat:abc:1700000000000": true, "12345678901234567890123": true,
		"0": false, "0:abc": false, "1": false, "123": false, "-12": false, "a:b": false, "a:b:c:d": false,
	} {
		err := ValidateJobID(id)
		if (err == nil) != ok {
			t.Errorf("ValidateJobID(%q) = %v, want ok=%v", id, err, ok)
		}
	}
}

func TestAddLayout(t *testing.T) {
	backends(t, func(t *testing.T, rdb *redis.Client, name string) {
		ctx := context.Background()
		q, _ := NewQueue(rdb, name, QueueOptions{})
		before := time.Now().UnixMilli()
		std, err := q.Add(ctx, "std", map[string]int{"n": 1}, JobOptions{Attempts: 3, Backoff: Backoff{Delay: time.Second}})
		if err != nil {
			t.Fatal(err)
		}
		pri, err := q.Add(ctx, "pri", json.RawMessage(`{"raw" : true}`), JobOptions{Priority: 5})
		if err != nil {
			t.Fatal(err)
		}
		del, err := q.Add(ctx, "del", nil, JobOptions{Delay: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		if std.ID != "1" || pri.ID != "2" || del.ID != "3" {
			t.Fatalf("ids = %s %s %s, want 1 2 3", std.ID, pri.ID, del.ID)
		}
		if w := rdb.LRange(ctx, q.Key("wait"), 0, -1).Val(); len(w) != 1 || w[0] != "1" {
			t.Fatalf("wait = %v", w)
		}
		h := rdb.HGetAll(ctx, q.Key("1")).Val()
		var opts map[string]any
		if err := json.Unmarshal([]byte(h["opts"]), &opts); err != nil {
			t.Fatal(err)
		}
		if opts["attempts"] != 3.0 || opts["backoff"].(map[string]any)["type"] != "fixed" || opts["backoff"].(map[string]any)["delay"] != 1000.0 {
			t.Fatalf("opts = %s", h["opts"])
		}
		if h["name"] != "std" || h["data"] != `{"n":1}` || h["delay"] != "0" || h["priority"] != "0" {
			t.Fatalf("hash = %v", h)
		}
		if ts, _ := strconv.ParseInt(h["timestamp"], 10, 64); ts < before || ts > time.Now().UnixMilli() {
			t.Fatalf("timestamp %s not in [%d, now]", h["timestamp"], before)
		}
		if d := rdb.HGet(ctx, q.Key("2"), "data").Val(); d != `{"raw" : true}` {
			t.Fatalf("raw data re-encoded: %q", d)
		}
		if d := rdb.HGet(ctx, q.Key("3"), "data").Val(); d != `{}` {
			t.Fatalf("nil data stored as %q, want {}", d)
		}
		zs := rdb.ZRangeWithScores(ctx, q.Key("prioritized"), 0, -1).Val()
		if len(zs) != 1 || zs[0].Member != "2" || zs[0].Score != 5*4294967296+1 {
			t.Fatalf("prioritized = %v", zs)
		}
		ts3, _ := strconv.ParseInt(rdb.HGet(ctx, q.Key("3"), "timestamp").Val(), 10, 64)
		ds := rdb.ZRangeWithScores(ctx, q.Key("delayed"), 0, -1).Val()
		if len(ds) != 1 || ds[0].Score != float64((ts3+60000)*4096) {
			t.Fatalf("delayed = %v, want score %d", ds, (ts3+60000)*4096)
		}
		// The marker: "0" for the ready jobs, "1" at the delayed job's due time.
		ms := rdb.ZRangeWithScores(ctx, q.Key("marker"), 0, -1).Val()
		if len(ms) != 2 || ms[0].Member != "0" || ms[0].Score != 0 || ms[1].Member != "1" || ms[1].Score != float64(ts3+60000) {
			t.Fatalf("marker = %v", ms)
		}
		var names []string
		for _, m := range rdb.XRange(ctx, q.Key("events"), "-", "+").Val() {
			names = append(names, m.Values["event"].(string))
		}
		if got := strings.Join(names, " "); got != "added waiting added waiting added delayed" {
			t.Fatalf("events = %s", got)
		}
		if v := rdb.HGet(ctx, q.Key("meta"), "opts.maxLenEvents").Val(); v != "10000" {
			t.Fatalf("meta opts.maxLenEvents = %q", v)
		}
		c, err := q.Counts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if c != (JobCounts{Waiting: 1, Prioritized: 1, Delayed: 1}) {
			t.Fatalf("counts = %+v", c)
		}
	})
}

func TestDelayedScoresShareAMillisecond(t *testing.T) {
	backends(t, func(t *testing.T, rdb *redis.Client, name string) {
		ctx := context.Background()
		q, _ := NewQueue(rdb, name, QueueOptions{})
		ts := time.UnixMilli(1_800_000_000_000)
		for i := 0; i < 3; i++ {
			if _, err := q.Add(ctx, "d", i, JobOptions{Delay: time.Second, Timestamp: ts}); err != nil {
				t.Fatal(err)
			}
		}
		ds := rdb.ZRangeWithScores(ctx, q.Key("delayed"), 0, -1).Val()
		base := float64((ts.UnixMilli() + 1000) * 4096)
		for i, z := range ds {
			if z.Score != base+float64(i) || z.Member != strconv.Itoa(i+1) {
				t.Fatalf("delayed[%d] = %v, want %v", i, z, base+float64(i))
			}
		}
	})
}

func TestDuplicateCustomIDWritesNothing(t *testing.T) {
	backends(t, func(t *testing.T, rdb *redis.Client, name string) {
		ctx := context.Background()
		q, _ := NewQueue(rdb, name, QueueOptions{})
		j1, err := q.Add(ctx, "a", "first", JobOptions{JobID: "order-7"})
		if err != nil || j1.ID != "order-7" || j1.Duplicate {
			t.Fatalf("first add: %+v, %v", j1, err)
		}
		j2, err := q.Add(ctx, "a", "second", JobOptions{JobID: "order-7"})
		if err != nil || j2.ID != "order-7" || !j2.Duplicate {
			t.Fatalf("second add: %+v, %v", j2, err)
		}
		if d := rdb.HGet(ctx, q.Key("order-7"), "data").Val(); d != `"first"` {
			t.Fatalf("data overwritten: %s", d)
		}
		if n := rdb.LLen(ctx, q.Key("wait")).Val(); n != 1 {
			t.Fatalf("wait has %d entries", n)
		}
		if n := rdb.Get(ctx, q.Key("id")).Val(); n != "2" {
			t.Fatalf("id counter = %s, want 2 (Node increments it on every add)", n)
		}
		last := rdb.XRevRangeN(ctx, q.Key("events"), "+", "-", 1).Val()
		if last[0].Values["event"] != "duplicated" || last[0].Values["jobId"] != "order-7" {
			t.Fatalf("last event = %v", last[0].Values)
		}
	})
}

func TestMaxQueueDepth(t *testing.T) {
	backends(t, func(t *testing.T, rdb *redis.Client, name string) {
		ctx := context.Background()
		q, _ := NewQueue(rdb, name, QueueOptions{MaxQueueDepth: 3})
		for _, o := range []JobOptions{{}, {Priority: 1}, {Delay: time.Hour}} {
			if _, err := q.Add(ctx, "j", 1, o); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := q.Add(ctx, "j", 1, JobOptions{}); !errors.Is(err, ErrQueueFull) {
			t.Fatalf("4th add: err = %v, want ErrQueueFull", err)
		}
		if n := rdb.Get(ctx, q.Key("id")).Val(); n != "3" {
			t.Fatalf("a rejected add wrote: id = %s", n)
		}
		q2, _ := NewQueue(rdb, name, QueueOptions{MaxQueueDepth: 4})
		if _, err := q2.AddBulk(ctx, []BulkJob{{Name: "a"}, {Name: "b"}}); !errors.Is(err, ErrQueueFull) {
			t.Fatalf("bulk over the limit: err = %v", err)
		}
		if n := rdb.LLen(ctx, q.Key("wait")).Val(); n != 1 {
			t.Fatalf("a rejected bulk wrote: wait = %d", n)
		}
		if _, err := q2.Add(ctx, "c", 1, JobOptions{}); err != nil {
			t.Fatalf("add under the limit: %v", err)
		}
	})
}

func TestQueueClosed(t *testing.T) {
	rdb, _ := miniClient(t)
	q, _ := NewQueue(rdb, "q", QueueOptions{})
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Add(context.Background(), "x", 1, JobOptions{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v", err)
	}
}
