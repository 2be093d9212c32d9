package redisleak

import (
	"log/slog"
	"runtime/debug"
	"sync"
	"time"
)

// closeWait is how long Close waits for an OnLeak call that is running.
const closeWait = time.Second

// callbackQueue runs Options.OnLeak for the background scan on a goroutine
// of its own, so that a slow or blocked OnLeak delays neither the scans nor
// Close, and nothing is lost: reports queue until OnLeak takes them.
type callbackQueue struct {
	mu   sync.Mutex
	q    []Leak
	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

func (t *Tracker) startCallbacks() {
	c := &t.callbacks
	c.wake = make(chan struct{}, 1)
	c.stop = make(chan struct{})
	c.done = make(chan struct{})
	go func() {
		defer close(c.done)
		for {
			select {
			case <-c.stop:
				return
			case <-c.wake:
			}
			for {
				c.mu.Lock()
				batch := c.q
				c.q = nil
				c.mu.Unlock()
				if len(batch) == 0 {
					break
				}
				for _, l := range batch {
					select {
					case <-c.stop:
						return
					default:
					}
					t.callOnLeak(l)
				}
			}
		}
	}()
}

func (c *callbackQueue) push(ls []Leak) {
	if c.wake == nil {
		return
	}
	c.mu.Lock()
	c.q = append(c.q, ls...)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// close stops the goroutine and waits for it up to closeWait; it reports
// whether the goroutine ended.
func (c *callbackQueue) close() bool {
	if c.stop == nil {
		return true
	}
	close(c.stop)
	select {
	case <-c.done:
		return true
	case <-time.After(closeWait):
		return false
	}
}

// callOnLeak calls OnLeak; a panic is logged, not propagated.
func (t *Tracker) callOnLeak(l Leak) {
	defer func() {
		if p := recover(); p != nil {
			t.opts.Logger.Error("redisleak: Options.OnLeak panicked; the tracker goes on",
				slog.Any("panic", p),
				slog.String("leak", l.String()),
				slog.String("stack", string(debug.Stack())))
		}
	}()
	t.opts.OnLeak(l)
}
