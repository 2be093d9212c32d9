package bullmq

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/redisleak/redisleak/internal/redistest"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	goleak.VerifyTestMain(m)
}

// realClient returns a client of a real Redis (shared or private) and a
// queue name unique to this test.
func realClient(t *testing.T) (*redis.Client, string) {
	t.Helper()
	addr := redistest.Addr(t)
	c := redis.NewClient(clientOptions(addr))
	t.Cleanup(func() { _ = c.Close() })
	return c, uniqueQueue(t)
}

// clientOptions are the options of the tests' clients: go-redis defaults.
func clientOptions(addr string) *redis.Options {
	return &redis.Options{Addr: addr}
}

// miniClient returns a client of a fresh miniredis.
func miniClient(t *testing.T) (*redis.Client, *miniredis.Miniredis) {
	t.Helper()
	m := miniredis.RunT(t)
	c := redis.NewClient(clientOptions(m.Addr()))
	t.Cleanup(func() { _ = c.Close() })
	return c, m
}

var nonWord = regexp.MustCompile(`[^A-Za-z0-9]+`)

func uniqueQueue(t testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	n := nonWord.ReplaceAllString(t.Name(), "-")
	if len(n) > 40 {
		n = n[:40]
	}
	return "t-" + n + "-" + hex.EncodeToString(b[:])
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// startWorker runs w until the test ends (Close with a 10s grace).
func startWorker(t testing.TB, w *Worker) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after Close")
		}
	})
	return done
}

// --- the Node peer ---

func interopDir(t testing.TB) string {
	t.Helper()
	dir, err := filepath.Abs("interop")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// needNode skips (or fails under REDISLEAK_REQUIRE_REDIS=1) when node or the
// peer's node_modules are missing.
func needNode(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		redistest.Unavailable(t, "node not found in PATH (the BullMQ interop peer needs it)")
	}
	if _, err := os.Stat(filepath.Join(interopDir(t), "node_modules", "bullmq", "package.json")); err != nil {
		redistest.Unavailable(t, "bullmq_compat/interop/node_modules missing: run npm ci there")
	}
}

func hostPort(t testing.TB, addr string) (string, int) {
	t.Helper()
	i := strings.LastIndex(addr, ":")
	var port int
	if err := json.Unmarshal([]byte(addr[i+1:]), &port); err != nil {
		t.Fatalf("bad address %q", addr)
	}
	return addr[:i], port
}

func nodeParams(t testing.TB, rdb *redis.Client, queue string, extra map[string]any) map[string]any {
	host, port := hostPort(t, rdb.Options().Addr)
	p := map[string]any{"host": host, "port": port, "queue": queue}
	for k, v := range extra {
		p[k] = v
	}
	return p
}

// runNode runs the peer in mode and decodes its last output line into out.
func runNode(t testing.TB, timeout time.Duration, mode string, params map[string]any, out any) {
	t.Helper()
	needNode(t)
	raw, _ := json.Marshal(params)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "peer.mjs", mode, string(raw))
	cmd.Dir = interopDir(t)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("node peer %s: %v\nstderr: %s\nstdout: %s", mode, err, stderr.String(), b)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if out != nil {
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), out); err != nil {
			t.Fatalf("node peer %s: bad output %q: %v", mode, b, err)
		}
	}
}

// nodeProc is a peer running in the background.
type nodeProc struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *strings.Builder
	cancel context.CancelFunc
}

// startNode starts the peer in mode; if waitReady, it returns once the peer
// printed its first line.
func startNode(t testing.TB, timeout time.Duration, mode string, params map[string]any, waitReady bool) *nodeProc {
	t.Helper()
	needNode(t)
	raw, _ := json.Marshal(params)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	cmd := exec.CommandContext(ctx, "node", "peer.mjs", mode, string(raw))
	cmd.Dir = interopDir(t)
	p := &nodeProc{cmd: cmd, lines: make(chan string, 16), stderr: &strings.Builder{}, cancel: cancel}
	cmd.Stderr = p.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	if waitReady {
		if _, ok := <-p.lines; !ok {
			_ = cmd.Wait()
			t.Fatalf("node peer %s ended before it was ready: %s", mode, p.stderr.String())
		}
	}
	return p
}

// result waits for the peer's last line and decodes it into out.
func (p *nodeProc) result(t testing.TB, out any) {
	t.Helper()
	var last string
	for l := range p.lines {
		last = l
	}
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("node peer: %v\nstderr: %s", err, p.stderr.String())
	}
	if err := json.Unmarshal([]byte(last), out); err != nil {
		t.Fatalf("node peer: bad output %q: %v", last, err)
	}
}
