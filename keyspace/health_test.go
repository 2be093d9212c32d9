package keyspace

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// freezeProxy forwards TCP connections to a backend; freeze makes the
// connections open at that moment go silent (nothing forwarded, nothing
// closed), like a peer behind a dead network path.
type freezeProxy struct {
	ln      net.Listener
	backend string
	mu      sync.Mutex
	conns   []*proxied
	wg      sync.WaitGroup
}

type proxied struct {
	client, server net.Conn
	frozen         chan struct{}
	once           sync.Once
}

func newFreezeProxy(t *testing.T, backend string) *freezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln, backend: backend}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *freezeProxy) addr() string { return p.ln.Addr().String() }

func (p *freezeProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.backend)
		if err != nil {
			_ = c.Close()
			continue
		}
		pc := &proxied{client: c, server: s, frozen: make(chan struct{})}
		p.mu.Lock()
		p.conns = append(p.conns, pc)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(pc, c, s)
		go p.pipe(pc, s, c)
	}
}

// pipe copies src to dst until either closes; once frozen it drops
// everything.
func (p *freezeProxy) pipe(pc *proxied, dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case <-pc.frozen:
			default:
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			_ = dst.Close()
			return
		}
	}
}

func (p *freezeProxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pc := range p.conns {
		pc.once.Do(func() { close(pc.frozen) })
	}
}

func (p *freezeProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for _, pc := range p.conns {
		_ = pc.client.Close()
		_ = pc.server.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestSilentConnectionIsReplaced: a subscriber connection that stops
// answering (no error, no data) is pinged, dropped, replaced, and the gap
// reported.
func TestSilentConnectionIsReplaced(t *testing.T) {
	mr, _ := newMini(t)
	proxy := newFreezeProxy(t, mr.Addr())
	rdb := redis.NewClient(&redis.Options{Addr: proxy.addr(), ReadTimeout: 300 * time.Millisecond})
	defer rdb.Close()
	gaps := make(chan struct{}, 10)
	errs := newErrSink()
	rec := newRecorder()
	m := startManager(t, rdb, Options{
		Config: ConfigSkip, PingInterval: 100 * time.Millisecond,
		OnGap: func() { gaps <- struct{}{} }, OnError: errs.report,
	}, func(m *Manager) { m.Handle("*", rec.handle) })
	mr.Publish("__keyspace@0__:before", "set")
	rec.until(t, "before", "")

	proxy.freeze()
	select {
	case <-gaps:
	case <-time.After(10 * time.Second):
		t.Fatal("silent connection not replaced within 10s")
	}
	mr.Publish("__keyspace@0__:after", "set")
	rec.until(t, "after", "")
	if s := m.Stats(); s.Reconnects < 1 || s.Gaps < 1 {
		t.Errorf("Stats = %+v", s)
	}
	errs.mu.Lock()
	defer errs.mu.Unlock()
	found := false
	for _, err := range errs.errs {
		found = found || errors.Is(err, errNoPong)
	}
	if !found {
		t.Errorf("OnError never got errNoPong: %v", errs.errs)
	}
}
