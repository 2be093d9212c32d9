// Package redistest gives tests a real Redis: the one named by REDIS_ADDR,
// else private redis-server processes on free loopback ports, stopped when
// the test ends. Without redis-server the test is skipped with a message,
// unless REDISLEAK_REQUIRE_REDIS=1, in which case it fails.
//
// Tests that change server-wide state (CONFIG SET, CLIENT KILL, FLUSH,
// restarts) must use Private, never Addr: REDIS_ADDR may name a shared server.
package redistest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Required reports whether tests must fail instead of skipping when no real
// Redis is available (REDISLEAK_REQUIRE_REDIS=1, set by .ci/run).
func Required() bool { return os.Getenv("REDISLEAK_REQUIRE_REDIS") == "1" }

// Unavailable skips t, or fails it when Required, with a message that says why.
func Unavailable(t testing.TB, why string) {
	t.Helper()
	if Required() {
		t.Fatalf("real Redis required (REDISLEAK_REQUIRE_REDIS=1) but unavailable: %s", why)
	}
	t.Skipf("skipping: no real Redis: %s (set REDIS_ADDR or install redis-server)", why)
}

// ServerBinary returns the path of redis-server, or "" when it is missing.
func ServerBinary() string {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return ""
	}
	return p
}

// Addr returns the address of a real Redis for tests that only read and write
// their own keys: REDIS_ADDR when set, else a private server for this test.
// Use unique key names: the server may be shared.
func Addr(t testing.TB) string {
	t.Helper()
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		return a
	}
	return Private(t).Addr
}

// Server is a private redis-server process.
type Server struct {
	Addr string
	Port int
	Dir  string

	t    testing.TB
	tls  bool // the port speaks TLS: readiness is a TCP accept
	args []string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// PrivateOptions tunes Private.
type PrivateOptions struct {
	// Args are extra redis-server arguments, e.g. {"--notify-keyspace-events", "Ex"}.
	Args []string
}

// Private starts a redis-server on a free loopback port for t alone and stops
// it when t ends.
func Private(t testing.TB, opts ...PrivateOptions) *Server {
	t.Helper()
	if ServerBinary() == "" {
		Unavailable(t, "redis-server not found in PATH")
	}
	s, err := launch(t, false, func(port int, dir string) ([]string, error) {
		args := serverArgs(port, dir)
		for _, o := range opts {
			args = append(args, o.Args...)
		}
		return args, nil
	})
	if err != nil {
		t.Fatalf("redistest: cannot start redis-server: %v", err)
	}
	return s
}

// serverArgs are the arguments of every private redis-server: loopback,
// nothing persisted, a log in dir named after the port (see logTail).
func serverArgs(port int, dir string) []string {
	return []string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir,
		"--daemonize", "no", "--loglevel", "warning",
		"--logfile", filepath.Join(dir, fmt.Sprintf("redis-%d.log", port)),
	}
}

// launch starts redis-server on a free loopback port (with bus, one whose
// cluster bus port is free too) and a new directory, with the arguments
// args gives for them, and stops it when t ends. Another process may take
// the port first: it tries five ports before it gives up.
func launch(t testing.TB, bus bool, args func(port int, dir string) ([]string, error)) (*Server, error) {
	var lastErr error
	for try := 0; try < 5; try++ {
		port, err := FreePort(bus)
		if err != nil {
			lastErr = err
			continue
		}
		dir := t.TempDir()
		s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), Port: port, Dir: dir, t: t}
		if s.args, err = args(port, dir); err != nil {
			return nil, err
		}
		if err := s.start(ServerBinary()); err != nil {
			lastErr = err
			continue
		}
		t.Cleanup(s.Stop)
		return s, nil
	}
	return nil, lastErr
}

func (s *Server) start(bin string) error {
	cmd := exec.Command(bin, s.args...)
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("redis-server on port %d exited at start (log: %s)", s.Port, s.logTail())
		default:
		}
		ready := pingRaw
		if s.tls {
			ready = dialOnly
		}
		if ready(s.Addr) == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	<-done
	return fmt.Errorf("redis-server on port %d did not answer within 10s", s.Port)
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, fmt.Sprintf("redis-%d.log", s.Port)))
	if len(b) > 500 {
		b = b[len(b)-500:]
	}
	return strings.TrimSpace(string(b))
}

// Stop kills the server and waits for it to exit. Safe to call twice.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Restart stops the server and starts it again on the same port (its data is
// lost: nothing is persisted).
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	var err error
	for try := 0; try < 50; try++ {
		if err = s.start(ServerBinary()); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("redistest: restart on port %d: %v", s.Port, err)
}

// Client returns a go-redis client for the server, closed when the test ends.
func (s *Server) Client(opts ...func(*redis.Options)) *redis.Client {
	o := &redis.Options{Addr: s.Addr, MaintNotificationsConfig: NoMaintNotifications()}
	for _, f := range opts {
		f(o)
	}
	c := redis.NewClient(o)
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// NoMaintNotifications returns a config that turns go-redis's maintenance
// notifications handshake off. go-redis v9.23's default (auto) mode sends
// CLIENT MAINT_NOTIFICATIONS on each new connection; Redis 7.0 rejects it and
// the client downgrades its options, which the race detector reports as a
// data race inside go-redis when two first connections (e.g. a PubSub and a
// pooled one) handshake at once. Test clients turn it off so that -race
// reports only our races.
func NoMaintNotifications() *maintnotifications.Config {
	return &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
}

// pingRaw sends PING over a fresh TCP connection, without go-redis.
func pingRaw(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("unexpected reply %q", line)
	}
	return nil
}

var portMu sync.Mutex
var portsGiven = map[int]bool{}

// FreePort returns a loopback TCP port that is free now and was not handed out
// before by this process. With bus, port+10000 (Redis Cluster's bus port) is
// free too.
func FreePort(bus bool) (int, error) {
	portMu.Lock()
	defer portMu.Unlock()
	for i := 0; i < 100; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if portsGiven[port] {
			continue
		}
		if bus {
			if port+10000 > 65535 {
				continue
			}
			l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
			if err != nil {
				continue
			}
			_ = l2.Close()
		}
		portsGiven[port] = true
		return port, nil
	}
	return 0, fmt.Errorf("no free port found")
}

// Cluster is a private Redis Cluster of primaries without replicas.
type Cluster struct {
	Nodes []*Server
}

// Addrs returns the nodes' addresses.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr
	}
	return out
}

// Client returns a ClusterClient for the cluster, closed when the test ends.
func (c *Cluster) Client(t testing.TB, opts ...func(*redis.ClusterOptions)) *redis.ClusterClient {
	o := &redis.ClusterOptions{Addrs: c.Addrs(), MaintNotificationsConfig: NoMaintNotifications()}
	for _, f := range opts {
		f(o)
	}
	cc := redis.NewClusterClient(o)
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// NewCluster starts a private cluster of n primaries (0 means 3), splits the
// 16384 slots evenly between them and waits until every node reports
// cluster_state:ok and agrees on the slot map. Stopped when t ends.
func NewCluster(t testing.TB, n int, opts ...PrivateOptions) *Cluster {
	t.Helper()
	if n <= 0 {
		n = 3
	}
	if ServerBinary() == "" {
		Unavailable(t, "redis-server not found in PATH")
	}
	c := &Cluster{}
	for i := 0; i < n; i++ {
		s, err := launch(t, true, func(port int, dir string) ([]string, error) {
			args := append(serverArgs(port, dir),
				"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"),
				"--cluster-node-timeout", "2000")
			for _, o := range opts {
				args = append(args, o.Args...)
			}
			return args, nil
		})
		if err != nil {
			t.Fatalf("redistest: cluster node: %v", err)
		}
		c.Nodes = append(c.Nodes, s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clients := make([]*redis.Client, n)
	for i, s := range c.Nodes {
		clients[i] = redis.NewClient(&redis.Options{Addr: s.Addr})
		defer clients[i].Close()
	}
	per := 16384 / n
	for i, cl := range clients {
		lo, hi := i*per, (i+1)*per-1
		if i == n-1 {
			hi = 16383
		}
		if err := cl.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", lo, hi).Err(); err != nil {
			t.Fatalf("redistest: ADDSLOTSRANGE on %s: %v", c.Nodes[i].Addr, err)
		}
	}
	for i := 1; i < n; i++ {
		if err := clients[i].ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(c.Nodes[0].Port)).Err(); err != nil {
			t.Fatalf("redistest: CLUSTER MEET: %v", err)
		}
	}
	for {
		ok := true
		for _, cl := range clients {
			info, err := cl.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, fmt.Sprintf("cluster_known_nodes:%d", n)) {
				ok = false
				break
			}
			slots, err := cl.ClusterSlots(ctx).Result()
			if err != nil || len(slots) != n {
				ok = false
				break
			}
		}
		if ok {
			return c
		}
		select {
		case <-ctx.Done():
			t.Fatalf("redistest: cluster did not converge within 30s")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitFor polls cond every 5 ms until it holds, and fails t when it does not
// hold within d. For conditions without a signal of their own (counters,
// stats).
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
