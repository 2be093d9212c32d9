package keyspace

import (
	"context"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"
)

func sortStrings(s []string) { sort.Strings(s) }

// maintain re-reads the topology and re-checks the server setting every
// CheckInterval until the manager closes.
func (m *Manager) maintain() {
	defer close(m.maintDone)
	t := time.NewTicker(m.opts.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-m.maintStop:
			return
		case <-t.C:
			m.checkOnce()
		}
	}
}

// checkOnce follows topology changes (a subscriber for each new primary or
// shard, none for those gone) and repairs the setting where it was lost.
func (m *Manager) checkOnce() {
	ctx, cancel := context.WithTimeout(m.connCtx, m.opts.CheckInterval+5*time.Second)
	defer cancel()
	go func() {
		select {
		case <-m.maintStop:
			cancel() // Close: do not wait for a slow server
		case <-ctx.Done():
		}
	}()
	nodes, err := m.listNodes(ctx)
	if err != nil {
		m.report(&NodeError{Node: "topology", Op: "topology", Err: err})
	} else if len(nodes) > 0 {
		m.reconcile(nodes)
	}
	m.mu.Lock()
	subs := m.subList()
	m.mu.Unlock()
	for _, ns := range subs {
		if ns.current() == nil {
			continue // reconnecting: the reconnect checks the setting
		}
		repaired, lastOK, err := ns.cfg.ensure(ctx)
		if err != nil {
			m.report(err)
		}
		if repaired {
			m.gap(Gap{Node: ns.addr, Reason: GapFlagsRemoved, Since: lastOK, At: time.Now()})
		}
	}
}

// reconcile makes the set of subscribers match nodes. A new node gets a
// subscriber that connects on its own goroutine and calls OnGap once
// subscribed (whatever it published before was missed).
func (m *Manager) reconcile(nodes []*redis.Client) {
	want := make(map[string]*redis.Client, len(nodes))
	for _, c := range nodes {
		want[c.Options().Addr] = c
	}
	var gone, added []*nodeSub
	m.mu.Lock()
	if m.state != stateRunning {
		m.mu.Unlock()
		return
	}
	for addr, ns := range m.subs {
		if c, ok := want[addr]; !ok || c != ns.client {
			gone = append(gone, ns)
			delete(m.subs, addr)
		}
	}
	for addr, c := range want {
		if _, ok := m.subs[addr]; !ok {
			ns := newNodeSub(m, c)
			m.subs[addr] = ns
			added = append(added, ns)
		}
	}
	m.mu.Unlock()
	for _, ns := range gone {
		ns.stop()
		ns.cfg.close()
	}
	for _, ns := range added {
		ns.start() // ps is nil: the loop connects, then OnGap
	}
}
