package keyspace

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
)

func TestLeaseNames(t *testing.T) {
	tests := []struct {
		need      string
		orig      string
		knowsOrig bool
		name      string
	}{
		{"K$", "", true, "keyspace|K$|"},
		{"KEA", "Ex", true, "keyspace|AKE|Ex"},
		{"Kx", "", false, "keyspace|Kx"},
	}
	for _, tt := range tests {
		got := leaseName(parseServerFlags(tt.need), tt.orig, tt.knowsOrig)
		if got != tt.name {
			t.Errorf("leaseName(%q, %q, %v) = %q, want %q", tt.need, tt.orig, tt.knowsOrig, got, tt.name)
		}
		l, ok := parseLease(got)
		if !ok || l.need != parseServerFlags(tt.need) || l.original != tt.orig || l.knowsOrig != tt.knowsOrig {
			t.Errorf("parseLease(%q) = %+v, %v", got, l, ok)
		}
	}
	if _, ok := parseLease("app"); ok {
		t.Error("parseLease accepted a name that is not a lease")
	}
}

// TestRollingDeployKeepsFlags: two instances of one service with
// RestoreOnClose. The old one closes while the new one runs: the new one
// keeps receiving events at once (the flags it needs stay); the last one to
// close restores the original.
func TestRollingDeployKeepsFlags(t *testing.T) {
	srv := redistest.Private(t)
	admin := srv.Client()
	ctx := context.Background()
	before := configValue(t, admin)
	opts := Options{Flags: "K$", RestoreOnClose: true}
	old := startManager(t, srv.Client(), opts, func(m *Manager) { m.Handle("d:*", func(Event) {}) })
	got := make(chan time.Time, 1000)
	next := startManager(t, srv.Client(), opts, func(m *Manager) {
		m.Handle("d:*", func(ev Event) { got <- time.Now() })
	})
	closeManager(t, old)
	closedAt := time.Now()
	if v := configValue(t, admin); parseServerFlags(v)&(flagKeyspace|flagString) != flagKeyspace|flagString {
		t.Errorf("after the old instance closed the setting is %q: flags the new one needs were removed", v)
	}
	// A change every 50 ms until the new instance sees one.
	var first time.Duration = -1
	for i := 0; i < 200 && first < 0; i++ {
		admin.Set(ctx, fmt.Sprintf("d:%d", i), "v", 0)
		select {
		case at := <-got:
			first = at.Sub(closedAt)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Logf("first event seen by the new instance %v after the old one closed", first.Round(time.Millisecond))
	if first < 0 || first > time.Second {
		t.Errorf("the new instance saw its first event %v after the old one closed, want at once (within 1 s)", first.Round(time.Millisecond))
	}
	if s := next.Stats(); s.Gaps != 0 {
		t.Errorf("new instance: %d gaps", s.Gaps)
	}
	closeManager(t, next)
	if v := configValue(t, admin); v != before {
		t.Errorf("after the last instance closed the setting is %q, want the original %q", v, before)
	}
}

// TestLeaseOfDeadProcessExpires: a manager in another process changes the
// setting first (its lease records the original) and is killed (SIGKILL,
// no Close). Its lease ends with its connection; the manager of this
// process restores the original, not the value the dead one left.
func TestLeaseOfDeadProcessExpires(t *testing.T) {
	srv := redistest.Private(t)
	admin := srv.Client()
	ctx := context.Background()
	before := configValue(t, admin)

	child := exec.Command(os.Args[0], "-test.run=^TestLeaseHelperProcess$")
	child.Env = append(os.Environ(), "KEYSPACE_LEASE_CHILD="+srv.Addr)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The helper runs until killed, or until its stdin ends: should this
	// process die first, the helper does not outlive it.
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = child.Process.Kill()
			_ = child.Wait()
		}
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "ready") {
				ready <- sc.Text()
			}
		}
		close(ready)
	}()
	select {
	case line, ok := <-ready:
		if !ok {
			t.Fatal("helper process ended before it was ready")
		}
		t.Logf("helper: %s", line)
	case <-time.After(30 * time.Second):
		t.Fatal("helper process not ready within 30 s")
	}
	if v := configValue(t, admin); parseServerFlags(v)&flagExpired == 0 {
		t.Fatalf("the helper's manager did not merge x: %q", v)
	}

	m := startManager(t, srv.Client(), Options{Flags: "K$", RestoreOnClose: true}, nil)
	_ = child.Process.Kill()
	_ = child.Wait()
	killed = true
	// The lease ends when the server has seen the connection close.
	redistest.WaitFor(t, 10*time.Second, "the dead process's lease to end", func() bool {
		list, err := admin.ClientList(ctx).Result()
		return err == nil && strings.Count(list, "name="+leasePrefix) == 1
	})
	closeManager(t, m)
	if v := configValue(t, admin); v != before {
		t.Errorf("after the dead process's lease ended and the last manager closed the setting is %q, want the original %q", v, before)
	}
}

// TestLeaseHelperProcess is the other process of TestLeaseOfDeadProcessExpires.
func TestLeaseHelperProcess(t *testing.T) {
	addr := os.Getenv("KEYSPACE_LEASE_CHILD")
	if addr == "" {
		t.Skip("helper process for TestLeaseOfDeadProcessExpires")
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaintNotificationsConfig: redistest.NoMaintNotifications()})
	m, err := NewManager(rdb, Options{Flags: "Kx", RestoreOnClose: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready", m.Nodes())
	_, _ = io.Copy(io.Discard, os.Stdin) // until killed, or the parent is gone
	_ = m.Close(context.Background())
	_ = rdb.Close()
}

// TestVerifyModeNeverRestores: a verify-mode manager with RestoreOnClose
// learns the original from a merging manager's lease, but never writes the
// setting, also not on Close.
func TestVerifyModeNeverRestores(t *testing.T) {
	srv := redistest.Private(t)
	admin := srv.Client()
	merger := startManager(t, srv.Client(), Options{Flags: "K$"}, nil)
	merged := configValue(t, admin)
	verifier := startManager(t, srv.Client(), Options{Flags: "K$", Config: ConfigVerify, RestoreOnClose: true}, nil)
	closeManager(t, merger)
	closeManager(t, verifier)
	if v := configValue(t, admin); v != merged {
		t.Errorf("after a verify-mode manager closed the setting is %q, want %q untouched", v, merged)
	}
}

// TestRollingDeployInCluster: the leases are per primary; the instance
// that closes first removes nothing on any primary, the last one restores
// every primary's original.
func TestRollingDeployInCluster(t *testing.T) {
	cl := redistest.NewCluster(t, 3)
	opts := Options{Flags: "Kg", RestoreOnClose: true}
	old := startManager(t, cl.Client(t), opts, nil)
	next := startManager(t, cl.Client(t), opts, nil)
	closeManager(t, old)
	for _, n := range cl.Nodes {
		if v := configValue(t, n.Client()); parseServerFlags(v)&(flagKeyspace|flagGeneric) != flagKeyspace|flagGeneric {
			t.Errorf("%s: after the first instance closed the setting is %q: flags the other needs were removed", n.Addr, v)
		}
	}
	closeManager(t, next)
	for _, n := range cl.Nodes {
		if v := configValue(t, n.Client()); v != "" {
			t.Errorf("%s: after the last instance closed the setting is %q, want the original \"\"", n.Addr, v)
		}
	}
}

// clientNames returns the name of every connection to the server, by id.
func clientNames(t *testing.T, admin *redis.Client) map[int64]string {
	t.Helper()
	list, err := admin.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatalf("CLIENT LIST: %v", err)
	}
	names := make(map[int64]string)
	for _, line := range strings.Split(list, "\n") {
		var id int64
		var name string
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "id="); ok {
				fmt.Sscan(v, &id)
			} else if v, ok := strings.CutPrefix(f, "name="); ok {
				name = v
			}
		}
		if id != 0 {
			names[id] = name
		}
	}
	return names
}

// leaseIDs returns the ids of the connections named after a lease.
func leaseIDs(names map[int64]string) []int64 {
	var ids []int64
	for id, name := range names {
		if _, ok := parseLease(name); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

// TestLeaseEndsWhenConnectionReturnsToPool: the config connection comes
// from the client's pool; on Close it goes back there, with the client's
// own name instead of the lease.
func TestLeaseEndsWhenConnectionReturnsToPool(t *testing.T) {
	srv := redistest.Private(t)
	admin := srv.Client()
	rdb := srv.Client(func(o *redis.Options) { o.ClientName = "app" })
	m := startManager(t, rdb, Options{Flags: "K$"}, nil)
	ids := leaseIDs(clientNames(t, admin))
	if len(ids) != 1 {
		t.Fatalf("%d leases while the manager runs, want 1", len(ids))
	}
	closeManager(t, m)
	names := clientNames(t, admin)
	if got := leaseIDs(names); len(got) != 0 {
		t.Errorf("after Close %d connections still carry a lease", len(got))
	}
	name, pooled := names[ids[0]]
	if !pooled {
		t.Fatalf("the config connection %d was closed, want it back in the client's pool", ids[0])
	}
	if name != "app" {
		t.Errorf("the config connection is back in the pool named %q, want the client's own name %q", name, "app")
	}
}

// TestLeaseRenewedOnNewConnection: when the config connection dies (here
// CLIENT KILL), the next check takes a new one and names it after the lease
// again, so that other managers keep seeing this one's needs.
func TestLeaseRenewedOnNewConnection(t *testing.T) {
	srv := redistest.Private(t)
	admin := srv.Client()
	startManager(t, srv.Client(), Options{Flags: "K$", CheckInterval: 50 * time.Millisecond}, nil)
	ids := leaseIDs(clientNames(t, admin))
	if len(ids) != 1 {
		t.Fatalf("%d leases while the manager runs, want 1", len(ids))
	}
	want := clientNames(t, admin)[ids[0]]
	if err := admin.ClientKillByFilter(context.Background(), "ID", fmt.Sprint(ids[0])).Err(); err != nil {
		t.Fatal(err)
	}
	var now []int64
	redistest.WaitFor(t, 10*time.Second, "a lease on a new connection", func() bool {
		now = leaseIDs(clientNames(t, admin))
		return len(now) == 1 && now[0] != ids[0]
	})
	if got := clientNames(t, admin)[now[0]]; got != want {
		t.Errorf("lease on the new connection %q, want %q", got, want)
	}
}
