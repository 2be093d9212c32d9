package keyspace

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
)

// nodeRecorder counts events per key and per node.
type nodeRecorder struct {
	mu     sync.Mutex
	keys   map[string]int
	nodes  map[string]int
	signal chan string
}

func newNodeRecorder() *nodeRecorder {
	return &nodeRecorder{keys: map[string]int{}, nodes: map[string]int{}, signal: make(chan string, 10000)}
}

func (r *nodeRecorder) handle(ev Event) {
	r.mu.Lock()
	r.keys[ev.Key]++
	r.nodes[ev.Node]++
	r.mu.Unlock()
	r.signal <- ev.Key
}

func (r *nodeRecorder) waitKeys(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		r.mu.Lock()
		got := len(r.keys)
		r.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-r.signal:
		case <-deadline:
			t.Fatalf("events for %d of %d keys within 20s", got, n)
		}
	}
}

func TestClusterEventsFromEverySlot(t *testing.T) {
	cl := redistest.NewCluster(t, 3)
	cc := cl.Client(t)
	ctx := context.Background()
	rec := newNodeRecorder()
	m := startManager(t, cc, Options{Flags: "K$"}, func(m *Manager) {
		m.Handle("ck:*", rec.handle)
	})
	addrs := cl.Addrs()
	sort.Strings(addrs)
	if got := m.Nodes(); !equalStrings(got, addrs) {
		t.Fatalf("subscribed to %q, want every primary %q", got, addrs)
	}
	// Config merged on every primary, not one.
	for _, n := range cl.Nodes {
		if v := configValue(t, n.Client()); parseServerFlags(v)&(flagKeyspace|flagString) != flagKeyspace|flagString {
			t.Errorf("%s has %q", n.Addr, v)
		}
	}
	// One key per slot range of 64 slots: every primary, all over the map.
	const keys = 600
	for i := 0; i < keys; i++ {
		if err := cc.Set(ctx, fmt.Sprintf("ck:%d", i), "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	cc.Set(ctx, "unwatched", "v", 0)
	rec.waitKeys(t, keys)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for k, n := range rec.keys {
		if n != 1 {
			t.Errorf("%s: %d events, want 1", k, n)
		}
	}
	if len(rec.nodes) != 3 {
		t.Errorf("events came from %v, want all 3 primaries", rec.nodes)
	}
}

// TestClusterFollowsTopology moves a slot to a fourth primary and back:
// the manager subscribes to the new primary (config merged, OnGap) and
// drops it when it owns no slots any more.
func TestClusterFollowsTopology(t *testing.T) {
	cl := redistest.NewCluster(t, 3)
	cc := cl.Client(t)
	ctx := context.Background()

	dir := t.TempDir()
	extra := redistest.Private(t, redistest.PrivateOptions{Args: []string{
		"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"),
		"--cluster-node-timeout", "2000",
	}})
	extraC := extra.Client()
	if err := extraC.ClusterMeet(ctx, "127.0.0.1", fmt.Sprint(cl.Nodes[0].Port)).Err(); err != nil {
		t.Fatal(err)
	}
	all := append(append([]*redistest.Server{}, cl.Nodes...), extra)
	waitFor(t, "4 nodes to know each other and the cluster ok", func() bool {
		for _, n := range all {
			info, err := n.Client().ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_known_nodes:4") || !strings.Contains(info, "cluster_state:ok") {
				return false
			}
		}
		return true
	})

	gaps := make(chan struct{}, 10)
	details := make(chan Gap, 10)
	rec := newNodeRecorder()
	m := startManager(t, cc, Options{Flags: "K$", CheckInterval: 100 * time.Millisecond, OnGap: func() { gaps <- struct{}{} },
		OnGapDetail: func(g Gap) { details <- g }},
		func(m *Manager) { m.Handle("*", rec.handle) })
	if n := len(m.Nodes()); n != 3 {
		t.Fatalf("subscribed to %d nodes, want the 3 primaries with slots", n)
	}

	// A key and its slot, owned by the last node.
	key := "topo:1"
	slot, err := cl.Nodes[0].Client().ClusterKeySlot(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	owner := ownerOf(t, cl, int(slot))
	moveSlot(t, all, int(slot), owner, extra)

	select {
	case <-gaps:
	case <-time.After(20 * time.Second):
		t.Fatal("no OnGap for the new primary within 20s")
	}
	if g := <-details; g.Node != extra.Addr || g.Reason != GapNodeJoined || g.At.Before(g.Since) {
		t.Errorf("gap detail %+v, want the new primary %s joined", g, extra.Addr)
	}
	waitFor(t, "subscriber on the new primary", func() bool { return len(m.Nodes()) == 4 })
	if v := configValue(t, extraC); parseServerFlags(v)&flagKeyspace == 0 {
		t.Errorf("new primary's setting %q: not merged", v)
	}
	if err := cc.Set(ctx, key, "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	rec.waitKeys(t, 1)
	rec.mu.Lock()
	if rec.nodes[extra.Addr] != 1 {
		t.Errorf("event sources %v, want the new primary %s", rec.nodes, extra.Addr)
	}
	rec.mu.Unlock()

	// Empty the slot and hand it back: the fourth node is no primary with
	// slots any more and its subscriber goes.
	if err := cc.Del(ctx, key).Err(); err != nil {
		t.Fatal(err)
	}
	moveSlot(t, all, int(slot), extra, owner)
	waitFor(t, "subscriber on the emptied node to go", func() bool { return len(m.Nodes()) == 3 })
}

func ownerOf(t *testing.T, cl *redistest.Cluster, slot int) *redistest.Server {
	t.Helper()
	slots, err := cl.Nodes[0].Client().ClusterSlots(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if slot >= s.Start && slot <= s.End {
			for _, n := range cl.Nodes {
				if n.Addr == s.Nodes[0].Addr {
					return n
				}
			}
		}
	}
	t.Fatalf("no owner for slot %d", slot)
	return nil
}

func nodeID(t *testing.T, s *redistest.Server) string {
	t.Helper()
	id, err := s.Client().Do(context.Background(), "CLUSTER", "MYID").Text()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// moveSlot moves an empty slot as redis-cli --cluster reshard does.
func moveSlot(t *testing.T, all []*redistest.Server, slot int, from, to *redistest.Server) {
	t.Helper()
	ctx := context.Background()
	fromID, toID := nodeID(t, from), nodeID(t, to)
	do := func(s *redistest.Server, args ...any) {
		t.Helper()
		if err := s.Client().Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%s: %v: %v", s.Addr, args, err)
		}
	}
	do(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", fromID)
	do(from, "CLUSTER", "SETSLOT", slot, "MIGRATING", toID)
	do(to, "CLUSTER", "SETSLOT", slot, "NODE", toID)
	// Redis 7 turns a primary that lost its last slot into a replica of the
	// new owner (cluster-allow-replica-migration): it may refuse by now.
	if err := from.Client().Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", toID).Err(); err != nil && !strings.Contains(err.Error(), "only with masters") {
		t.Fatalf("%s: SETSLOT NODE: %v", from.Addr, err)
	}
	for _, s := range all {
		if s != from && s != to {
			do(s, "CLUSTER", "SETSLOT", slot, "NODE", toID)
		}
	}
	waitFor(t, fmt.Sprintf("slot %d owned by %s everywhere", slot, to.Addr), func() bool {
		for _, s := range all {
			slots, err := s.Client().ClusterSlots(ctx).Result()
			if err != nil {
				return false
			}
			ok := false
			for _, r := range slots {
				if slot >= r.Start && slot <= r.End && r.Nodes[0].Addr == to.Addr {
					ok = true
				}
			}
			if !ok {
				return false
			}
		}
		return true
	})
}

var _ = redis.Nil

// TestClusterNodeReconnect: killing the subscriber on one primary replaces
// that subscriber only (one OnGap); a handler added afterwards is
// subscribed on every primary.
func TestClusterNodeReconnect(t *testing.T) {
	cl := redistest.NewCluster(t, 3)
	cc := cl.Client(t)
	ctx := context.Background()
	gaps := make(chan struct{}, 10)
	first := newNodeRecorder()
	m := startManager(t, cc, Options{Flags: "K$", OnGap: func() { gaps <- struct{}{} }}, func(m *Manager) {
		m.Handle("a:*", first.handle)
	})
	victim := cl.Nodes[1].Client()
	if n, err := victim.ClientKillByFilter(ctx, "TYPE", "pubsub").Result(); err != nil || n != 1 {
		t.Fatalf("CLIENT KILL TYPE pubsub on %s = %d, %v", cl.Nodes[1].Addr, n, err)
	}
	select {
	case <-gaps:
	case <-time.After(10 * time.Second):
		t.Fatal("no OnGap after killing one primary's subscriber")
	}
	later := newNodeRecorder()
	if err := m.HandleEvents("b:*", later.handle); err != nil {
		t.Fatal(err)
	}
	const keys = 90
	for i := 0; i < keys; i++ {
		if err := cc.Set(ctx, fmt.Sprintf("a:%d", i), "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if err := cc.Set(ctx, fmt.Sprintf("b:%d", i), "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	first.waitKeys(t, keys)
	later.waitKeys(t, keys)
	for _, r := range []*nodeRecorder{first, later} {
		r.mu.Lock()
		if len(r.nodes) != 3 {
			t.Errorf("events from %v, want all 3 primaries", r.nodes)
		}
		r.mu.Unlock()
	}
	if s := m.Stats(); s.Gaps != 1 || s.Reconnects != 1 || s.Nodes != 3 {
		t.Errorf("Stats = %+v, want exactly one gap and one reconnect", s)
	}
}
