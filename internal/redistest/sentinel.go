package redistest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Sentinel starts a private Redis Sentinel monitoring master under the name
// masterName (quorum 1), stopped when t ends.
func Sentinel(t testing.TB, master *Server, masterName string) *Server {
	t.Helper()
	if ServerBinary() == "" {
		Unavailable(t, "redis-server not found in PATH")
	}
	s, err := launch(t, false, func(port int, dir string) ([]string, error) {
		conf := filepath.Join(dir, "sentinel.conf")
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\nsentinel monitor %s 127.0.0.1 %d 1\nsentinel down-after-milliseconds %s 1000\n",
			port, dir, filepath.Join(dir, fmt.Sprintf("redis-%d.log", port)), masterName, master.Port, masterName)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			return nil, err
		}
		return []string{conf, "--sentinel"}, nil
	})
	if err != nil {
		t.Fatalf("redistest: cannot start sentinel: %v", err)
	}
	return s
}
