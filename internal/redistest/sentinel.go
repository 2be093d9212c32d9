package redistest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// Sentinel starts a private Redis Sentinel monitoring master under the name
// masterName (quorum 1), stopped when t ends.
func Sentinel(t testing.TB, master *Server, masterName string) *Server {
	t.Helper()
	bin := ServerBinary()
	if bin == "" {
		Unavailable(t, "redis-server not found in PATH")
	}
	var lastErr error
	for try := 0; try < 5; try++ {
		port, err := FreePort(false)
		if err != nil {
			lastErr = err
			continue
		}
		dir := t.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\nsentinel monitor %s 127.0.0.1 %d 1\nsentinel down-after-milliseconds %s 1000\n",
			port, dir, filepath.Join(dir, fmt.Sprintf("redis-%d.log", port)), masterName, master.Port, masterName)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), Port: port, Dir: dir, t: t}
		s.args = []string{conf, "--sentinel"}
		if err := s.start(bin); err != nil {
			lastErr = err
			continue
		}
		t.Cleanup(s.Stop)
		return s
	}
	t.Fatalf("redistest: cannot start sentinel: %v", lastErr)
	return nil
}
