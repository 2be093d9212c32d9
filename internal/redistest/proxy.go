package redistest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy is a loopback TCP proxy in front of a Redis server whose replies can
// be stalled: the peer "stops answering" while the connection stays open.
type Proxy struct {
	Addr    string
	target  string
	ln      net.Listener
	stalled atomic.Bool
	mu      sync.Mutex
	resume  chan struct{} // closed when the stall ends (or the proxy closes)
	closed  bool
	conns   []net.Conn
	wg      sync.WaitGroup
}

// NewProxy starts a proxy to target, closed when t ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Stall stops (true) or resumes (false) forwarding replies to clients.
// Bytes read from the server while stalled are held back, not dropped, and
// forwarded at once when the stall ends.
func (p *Proxy) Stall(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on == p.stalled.Load() {
		return
	}
	if on {
		p.resume = make(chan struct{})
	} else {
		close(p.resume)
	}
	p.stalled.Store(on)
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); _, _ = io.Copy(s, c); _ = s.Close() }()
		go func() { defer p.wg.Done(); p.copyReplies(c, s); _ = c.Close() }()
	}
}

func (p *Proxy) copyReplies(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for n > 0 && p.stalled.Load() {
			// hold the reply back until resumed or closed
			if !p.waitResume() {
				return
			}
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// waitResume waits until the stall ends; false once the proxy is closed.
func (p *Proxy) waitResume() bool {
	p.mu.Lock()
	closed, resume := p.closed, p.resume
	p.mu.Unlock()
	if closed {
		return false
	}
	if resume != nil {
		<-resume
	}
	return true
}

// Close stops the proxy and closes every connection through it.
func (p *Proxy) Close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
	if !p.closed {
		p.closed = true
		if p.stalled.Load() {
			close(p.resume) // wake stalled copies: they see closed
			p.stalled.Store(false)
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
}
