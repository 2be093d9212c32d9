package sse

import (
	"fmt"
	"testing"

	"github.com/redisleak/redisleak/internal/redistest"
)

// TestCluster: on a 3-master Redis Cluster (ClusterClient: the script runs
// on the slot owner of the namespace; plain SUBSCRIBE on any node, SSUBSCRIBE
// on the slot owner), events fan out between two managers with plain and
// with sharded pub/sub, and replay works.
func TestCluster(t *testing.T) {
	cl := redistest.NewCluster(t, 3)
	for _, sharded := range []bool{false, true} {
		t.Run(fmt.Sprintf("sharded=%v", sharded), func(t *testing.T) {
			ns := testNamespace(t)
			m1, _ := startManager(t, cl.Client(t), Options{Namespace: ns, Sharded: sharded})
			m2, srv2 := startManager(t, cl.Client(t), Options{Namespace: ns, Sharded: sharded})
			s := open(t, srv2.URL+"?topic=a&topic=b", nil)
			s.ready(t)
			var ids []string
			for i := 0; i < 5; i++ {
				ids = append(ids, publish(t, m1, []string{"a", "b"}[i%2], "", fmt.Sprint(i)))
			}
			for i, id := range ids {
				if e := s.next(t); e.ID != id || e.Data != fmt.Sprint(i) {
					t.Fatalf("event %d = %+v, want %s", i, e, id)
				}
			}
			r := open(t, srv2.URL+"?topic=b&lastEventId="+ids[0], nil)
			r.ready(t)
			for _, i := range []int{1, 3} {
				if e := r.next(t); e.ID != ids[i] {
					t.Fatalf("replay got %+v, want %s", e, ids[i])
				}
			}
			if st := m2.Stats(); st.Received < 5 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}
