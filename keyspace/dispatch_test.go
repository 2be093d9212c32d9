package keyspace

import (
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// BenchmarkDispatch measures the manager's own cost per event, without
// Redis: routing a message read by the subscriber and the handler call,
// which runs on the reader's goroutine while handlers keep up (as here: the
// handler only counts).
func BenchmarkDispatch(b *testing.B) {
	for _, workers := range []int{1, 2} {
		b.Run("workers="+strconv.Itoa(workers), func(b *testing.B) {
			mr, err := miniredis.Run()
			if err != nil {
				b.Fatal(err)
			}
			defer mr.Close()
			rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			defer rdb.Close()
			var n atomic.Int64
			done := make(chan struct{})
			target := int64(b.N)
			m, err := NewManager(rdb, Options{Config: ConfigSkip, Workers: workers})
			if err != nil {
				b.Fatal(err)
			}
			m.Handle("user:*", func(Event) {
				if n.Add(1) == target {
					close(done)
				}
			})
			if err := m.Start(b.Context()); err != nil {
				b.Fatal(err)
			}
			defer m.Close(b.Context())
			ns := m.subList()[0]
			msgs := make([]*redis.Message, 1024)
			for i := range msgs {
				msgs[i] = &redis.Message{Pattern: "__keyspace@0__:user:*", Channel: "__keyspace@0__:user:" + strconv.Itoa(i), Payload: "set"}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				m.deliver(ns, msgs[i&1023])
			}
			<-done
		})
	}
}
