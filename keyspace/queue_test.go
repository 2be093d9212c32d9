package keyspace

import "testing"

// TestQueueDropOldestClaimsFromBatch: the oldest event not yet started may
// already be in the batch the handler goroutine took; OverflowDropOldest
// drops it there (the handler goroutine skips it), then from the waiting
// events once the batch is used up.
func TestQueueDropOldestClaimsFromBatch(t *testing.T) {
	m := &Manager{opts: Options{Overflow: OverflowDropOldest}}
	q := newQueue(m, 3)
	q.cur = []item{{key: "a"}, {key: "b"}, {key: "c"}}
	q.next.Store(1) // a is being handled; b and c wait in the batch
	q.push(item{key: "d"}, nil)
	if n := q.queued(); n != 3 || m.stats.dropped.Load() != 0 {
		t.Fatalf("queued %d, dropped %d; want 3 and 0", n, m.stats.dropped.Load())
	}
	for _, k := range []string{"e", "f", "g"} { // drop b, c (batch), then d
		q.push(item{key: k}, nil)
	}
	if n, d := q.queued(), m.stats.dropped.Load(); n != 3 || d != 3 {
		t.Fatalf("queued %d, dropped %d; want 3 and 3", n, d)
	}
	if q.next.Load() < int64(len(q.cur)) {
		t.Errorf("batch not used up: next %d of %d", q.next.Load(), len(q.cur))
	}
	var got []string
	for _, it := range q.buf[q.head:] {
		got = append(got, it.key)
	}
	if !equalStrings(got, []string{"e", "f", "g"}) {
		t.Errorf("waiting %q, want e f g", got)
	}
}

// TestQueueDropNewestCountsBatch: the unclaimed rest of the batch counts
// against the capacity.
func TestQueueDropNewestCountsBatch(t *testing.T) {
	m := &Manager{opts: Options{Overflow: OverflowDropNewest}}
	q := newQueue(m, 3)
	q.cur = []item{{key: "a"}, {key: "b"}, {key: "c"}}
	q.next.Store(1)
	q.push(item{key: "d"}, nil)
	q.push(item{key: "e"}, nil) // b, c, d queued: dropped
	if n, d := q.queued(), m.stats.dropped.Load(); n != 3 || d != 1 {
		t.Fatalf("queued %d, dropped %d; want 3 and 1", n, d)
	}
	q.next.Store(2) // the handler goroutine started b
	q.push(item{key: "f"}, nil)
	if n, d := q.queued(), m.stats.dropped.Load(); n != 3 || d != 1 {
		t.Fatalf("queued %d, dropped %d; want 3 and 1", n, d)
	}
}

// TestQueueConcurrent: two readers (two servers) push into one small queue
// while its handler goroutine runs; every event is handled or counted as
// dropped, each reader's events in order.
func TestQueueConcurrent(t *testing.T) {
	for _, policy := range []Overflow{OverflowBlock, OverflowDropNewest, OverflowDropOldest} {
		t.Run(policy.String(), func(t *testing.T) {
			const readers, per = 2, 20000
			last := make([]int, readers)
			handled := 0
			h := &handler{glob: "*", fn: func(ev Event) {
				r, seq := int(ev.Key[0]-'0'), 0
				for _, c := range ev.Key[2:] {
					seq = seq*10 + int(c-'0')
				}
				if seq <= last[r] {
					t.Errorf("reader %d: event %d after %d", r, seq, last[r])
				}
				last[r] = seq
				handled++
			}}
			m := &Manager{opts: Options{Overflow: policy}}
			pr := &patternRoutes{keyspace: true, routes: []route{{h: h, keyspace: true}}}
			ns := &nodeSub{addr: "test"}
			q := newQueue(m, 4)
			m.workers.Add(1)
			go q.run()
			stop := make(chan struct{})
			done := make(chan struct{})
			for r := 0; r < readers; r++ {
				go func() {
					defer func() { done <- struct{}{} }()
					for i := 1; i <= per; i++ {
						q.push(item{ns: ns, pr: pr, key: string(rune('0'+r)) + ":" + itoa(i)}, stop)
					}
				}()
			}
			for r := 0; r < readers; r++ {
				<-done
			}
			q.close()
			m.workers.Wait()
			dropped := int(m.stats.dropped.Load())
			if handled+dropped != readers*per {
				t.Errorf("handled %d + dropped %d != %d", handled, dropped, readers*per)
			}
			if policy == OverflowBlock && dropped != 0 {
				t.Errorf("block dropped %d", dropped)
			}
		})
	}
}

func itoa(i int) string {
	var b [20]byte
	n := len(b)
	for {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			return string(b[n:])
		}
	}
}
