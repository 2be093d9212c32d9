package redistest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// NginxBinary returns the path of nginx (Debian installs it in /usr/sbin),
// or "".
func NginxBinary() string {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	return ""
}

// Nginx is a private nginx process: its own prefix directory (config, pid,
// logs, temp files) and a free loopback port, never the system service.
type Nginx struct {
	// Addr is "127.0.0.1:<Port>", where the server block listens.
	Addr string
	Port int
	Dir  string
}

// StartNginx starts nginx in the foreground (daemon off) on a free loopback
// port and stops it when t ends. server returns the directives of the http
// block (upstreams and one server block) for the port; it must contain
// "listen 127.0.0.1:<port>;". Without nginx t is skipped, or fails under
// REDISLEAK_REQUIRE_REDIS=1 (.ci/run installs Debian's nginx).
func StartNginx(t testing.TB, server func(port int) string) *Nginx {
	t.Helper()
	bin := NginxBinary()
	if bin == "" {
		Unavailable(t, "nginx not installed (apt-get install nginx)")
	}
	var lastErr error
	for try := 0; try < 5; try++ {
		port, err := FreePort(false)
		if err != nil {
			lastErr = err
			continue
		}
		n := &Nginx{Addr: "127.0.0.1:" + strconv.Itoa(port), Port: port, Dir: t.TempDir()}
		if lastErr = n.start(t, bin, server(port)); lastErr == nil {
			return n
		}
	}
	t.Fatalf("redistest: cannot start nginx: %v", lastErr)
	return nil
}

func (n *Nginx) start(t testing.TB, bin, http string) error {
	user := ""
	if os.Geteuid() == 0 {
		// Workers would run as nobody, which cannot use the temp dirs.
		user = "user root root;\n"
	}
	conf := fmt.Sprintf(`%sworker_processes 1;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 1024; }
http {
    access_log %[2]s/access.log;
    client_body_temp_path %[2]s/tmp/body;
    proxy_temp_path %[2]s/tmp/proxy;
    fastcgi_temp_path %[2]s/tmp/fastcgi;
    uwsgi_temp_path %[2]s/tmp/uwsgi;
    scgi_temp_path %[2]s/tmp/scgi;
%[3]s
}
`, user, n.Dir, http)
	if err := os.MkdirAll(filepath.Join(n.Dir, "tmp"), 0o755); err != nil {
		return err
	}
	confPath := filepath.Join(n.Dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "-p", n.Dir, "-c", confPath, "-e", filepath.Join(n.Dir, "error.log"), "-g", "daemon off;")
	cmd.Stdout, cmd.Stderr = nil, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM) // fast shutdown
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(n.Dir, "error.log"))
			return fmt.Errorf("nginx on port %d exited at start: %s %s", n.Port, stderr.String(), log)
		default:
		}
		if c, err := net.DialTimeout("tcp", n.Addr, 200*time.Millisecond); err == nil {
			_ = c.Close()
			t.Cleanup(stop)
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	return fmt.Errorf("nginx on port %d did not accept within 10s", n.Port)
}

// Log returns nginx's error log (for failure messages).
func (n *Nginx) Log() string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "error.log"))
	return string(b)
}
