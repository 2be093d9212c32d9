package sse

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/redisleak/redisleak/internal/redistest"
)

// watchPage subscribes with EventSource to /events plus the page's own query
// (e.g. "/?topic=p"), and reports its opens and errors, and what it has
// received (every 100 ms while something changed).
const watchPage = `<!doctype html>
<html><body><script>
function report(o) {
  fetch('/report', {method: 'POST', body: JSON.stringify(o), keepalive: true});
}
const seen = [];
let reported = 0;
const es = new EventSource('/events' + location.search);
es.onopen = () => report({kind: 'open'});
es.onerror = () => report({kind: 'error', state: es.readyState});
es.onmessage = (e) => { seen.push(e.lastEventId + ' ' + e.data); };
es.addEventListener('reset', (e) => { seen.push('reset ' + e.lastEventId + ' ' + e.data); });
setInterval(() => {
  if (seen.length !== reported) { reported = seen.length; report({kind: 'message', seen: seen}); }
}, 100);
</script></body></html>`

// clientLog is what one real client (a browser page or a Node process)
// reported: "<id> <data>" per message, "reset <id> <data>" per reset, the
// readyState of every error, and the number of opens.
type clientLog struct {
	mu     sync.Mutex
	seen   []string
	errors []int
	opens  int
}

func (l *clientLog) snapshot() (seen []string, errors []int, opens int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.seen...), append([]int(nil), l.errors...), l.opens
}

// has reports whether entry was received.
func (l *clientLog) has(entry string) bool {
	seen, _, _ := l.snapshot()
	for _, s := range seen {
		if s == entry {
			return true
		}
	}
	return false
}

// msgs splits the log into events and resets, as the Go clients record them.
func (l *clientLog) msgs() (events, resets []msg) {
	seen, _, _ := l.snapshot()
	for _, s := range seen {
		if rest, ok := strings.CutPrefix(s, "reset "); ok {
			id, data, _ := strings.Cut(rest, " ")
			resets = append(resets, msg{ID: id, Event: ResetEvent, Data: data, HasID: true, HasData: true})
			continue
		}
		id, data, _ := strings.Cut(s, " ")
		events = append(events, msg{ID: id, Data: data, HasID: true, HasData: true})
	}
	return events, resets
}

// servePage adds watchPage at "/" and its report endpoint to mux; the page
// reports into the returned log.
func servePage(mux *http.ServeMux) *clientLog {
	l := &clientLog{}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte(watchPage))
	})
	mux.HandleFunc("POST /report", func(w http.ResponseWriter, r *http.Request) {
		var rep browserReport
		if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		switch rep.Kind {
		case "open":
			l.opens++
		case "error":
			l.errors = append(l.errors, rep.State)
		case "message":
			if len(rep.Seen) > len(l.seen) {
				l.seen = rep.Seen
			}
		}
	})
	return l
}

// startChromium opens url in headless Chromium until the test ends.
func startChromium(t *testing.T, url string) {
	t.Helper()
	bin := redistest.Chromium(t)
	var stderr bytes.Buffer
	cmd := exec.Command(bin, append(redistest.ChromiumFlags, "--user-data-dir="+t.TempDir(), url)...)
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		redistest.Unavailable(t, "cannot start chromium: "+err.Error())
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("chromium stderr:\n%s", stderr.String())
		}
	})
}

// watchNode runs a Node eventsource client on url and logs what it reports
// until the test ends.
func watchNode(t *testing.T, url string) *clientLog {
	t.Helper()
	nc := startNodeClient(t, url)
	l := &clientLog{}
	go func() {
		for r := range nc.Reports {
			l.mu.Lock()
			switch r.Kind {
			case "open":
				l.opens++
			case "message":
				l.seen = append(l.seen, r.ID+" "+r.Data)
			case "reset":
				l.seen = append(l.seen, "reset "+r.ID+" "+r.Data)
			case "error":
				l.errors = append(l.errors, r.State)
			}
			l.mu.Unlock()
		}
	}()
	return l
}
