package redistest

import (
	"os/exec"
	"testing"
)

// Chromium returns the path of a headless-capable Chromium, or skips t (fails
// it under REDISLEAK_REQUIRE_REDIS=1: CI installs Debian's chromium).
func Chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	Unavailable(t, "chromium not installed (apt-get install chromium)")
	return ""
}

// ChromiumFlags are the flags every browser test starts Chromium with:
// headless, and nothing that reaches outside the machine.
var ChromiumFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
	"--disable-background-networking", "--disable-component-update",
	"--disable-sync", "--disable-quic",
}
