package redisleak

import (
	"context"
	"log/slog"

	"github.com/redis/go-redis/v9"
)

// Connections that exist when Instrument is called.
//
// go-redis offers no way to list a pool's connections, and its observer
// reports only state changes: a connection opened before the tracker shows
// up at its next event, and a connection held by a Conn that is never used
// again produces none at all. So, when a node client is attached:
//
//  1. A probe learns the client's pool name: one PING with an
//     already-cancelled context. go-redis announces the request to the
//     recorder with the pool's name before it waits for a connection, then
//     gives up at once on the cancelled context: nothing reaches Redis,
//     nothing waits, no pool timeout is counted (even on a full pool).
//  2. From then on, any event about an unwrapped connection of that pool
//     gives it a record.
//  3. go-redis's counts (PoolStats) of idle and in-use connections, minus
//     those already identified, become anonymous records: idle ones, and
//     holds "since before Instrument" (kind conn, no site, timed from
//     Instrument). Each is claimed by the first connection of its pool that
//     leaves that state (the pool's "-1 idle" / "-1 used" event, inside its
//     lock, so none is counted twice).
//  4. Only then is the dial hook added: every connection dialed later is
//     wrapped and exact.
//
// The scan checks anonymous holds against go-redis's counts before
// reporting one (reconcileAnon): a count can be off by a connection that
// changed state during step 3.

// siteBeforeInstrument is the Site of a hold that was running when the
// tracker was attached.
const siteBeforeInstrument = "(held since before Instrument)"

// probeResult is filled by the dispatcher while a probe runs.
type probeResult struct{ pool string }

// anonPool holds the anonymous records of one go-redis pool.
type anonPool struct {
	client     *redis.Client
	kind       poolKind
	idle, used []*connRecord
}

type poolKind uint8

const (
	poolMain poolKind = iota
	poolPipeline
	poolPubSub
)

// probePoolName starts a request on c with an already-cancelled context
// and returns the name of c's main pool as the installed recorder was told
// it ("" when the dispatcher is not the installed recorder).
func probePoolName(c *redis.Client) string {
	res := &probeResult{}
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), markKey{}, &mark{longLived: true, owner: "redisleak:probe"}))
	cancel()
	// go-redis announces the request on this goroutine: the dispatcher
	// finds res by it
	g := curG()
	disp.probes.Store(g, res)
	disp.slow.Add(1)
	disp.probing.Add(1)
	_ = c.Ping(ctx).Err()
	disp.probing.Add(-1)
	disp.slow.Add(-1)
	disp.probes.Delete(g)
	return res.pool
}

// adoptExisting counts the connections c has before its dial hook is added.
func (t *Tracker) adoptExisting(c *redis.Client) {
	ps := c.PoolStats()
	if ps.TotalConns == 0 && ps.PubSubStats.Active == 0 && (ps.PipelineStats == nil || ps.PipelineStats.TotalConns == 0) {
		return // nothing to adopt; new connections name their pool themselves
	}
	name := probePoolName(c)
	if name == "" {
		t.opts.Logger.Warn("redisleak: could not learn the pool name of a client with open connections; they are tracked from their next use",
			slog.String("addr", c.Options().Addr))
		return
	}
	disp.learnPrefix(name, t)
	ps = c.PoolStats()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.addAnonLocked(c, name, poolMain, ps)
	if ps.PipelineStats != nil {
		t.addAnonLocked(c, name+"_pipeline", poolPipeline, ps)
	}
	t.addAnonLocked(c, name+"_pubsub", poolPubSub, ps)
}

// counts returns the idle and in-use connections of the pool of kind k in
// go-redis's stats of its client.
func (k poolKind) counts(ps *redis.PoolStats) (idle, used int) {
	switch k {
	case poolMain:
		return int(ps.IdleConns), int(ps.TotalConns) - int(ps.IdleConns)
	case poolPipeline:
		if pp := ps.PipelineStats; pp != nil {
			return int(pp.IdleConns), int(pp.TotalConns) - int(pp.IdleConns)
		}
	case poolPubSub:
		return 0, int(ps.PubSubStats.Active)
	}
	return 0, 0
}

// addAnonLocked adds anonymous records for the connections of pool in ps,
// less those of the pool already identified. Called with t.mu held.
func (t *Tracker) addAnonLocked(c *redis.Client, pool string, kind poolKind, ps *redis.PoolStats) {
	idle, used := kind.counts(ps)
	knownIdle, knownUsed := t.identifiedLocked(pool)
	idle -= knownIdle
	used -= knownUsed
	if idle <= 0 && used <= 0 {
		return
	}
	if t.anon == nil {
		t.anon = map[string]*anonPool{}
	}
	ap := t.anon[pool]
	if ap == nil {
		ap = &anonPool{client: c, kind: kind}
		t.anon[pool] = ap
	}
	now := nanotime()
	for i := 0; i < idle+used; i++ {
		r := &connRecord{tr: t, id: t.nextID.Add(1), addr: *t.internPool(c.Options().Addr), anon: true}
		r.setPool(pool)
		if i < idle {
			r.state.Store(stIdle)
			ap.idle = append(ap.idle, r)
		} else {
			r.acquiredAt.Store(now)
			r.holdSeq.Store(1)
			r.pre = true
			if kind == poolPubSub {
				r.pubsub.Store(true)
			} else {
				r.sticky.Store(stickyConn)
			}
			r.state.Store(stUsed)
			ap.used = append(ap.used, r)
		}
		t.records[r] = struct{}{}
		disp.addAnon(1)
	}
	t.syncLegacyN()
}

// syncLegacyN updates legacyN, and hookSlow with it (a rise counted there
// first, a fall last). Called with t.mu held.
func (t *Tracker) syncLegacyN() {
	n := len(t.legacy)
	for _, ap := range t.anon {
		n += len(ap.idle) + len(ap.used)
	}
	d := int64(n) - t.legacyN.Load()
	if d > 0 {
		t.hookSlow.Add(d)
	}
	t.legacyN.Store(int64(n))
	if d < 0 {
		t.hookSlow.Add(d)
	}
}

// claimAnon takes an anonymous record of pool in state from, or returns
// nil. Called with t.mu held.
func (t *Tracker) claimAnon(pool string, from uint32) *connRecord {
	ap := t.anon[pool]
	if ap == nil {
		return nil
	}
	list := &ap.idle
	if from == stUsed {
		list = &ap.used
	}
	n := len(*list)
	if n == 0 {
		return nil
	}
	r := (*list)[n-1]
	*list = (*list)[:n-1]
	r.anon = false
	disp.addAnon(-1)
	return r // legacyRecord syncs legacyN
}

// forgetAnon removes r from the anonymous records. Called with t.mu held.
func (t *Tracker) forgetAnon(r *connRecord) {
	if !r.anon {
		return
	}
	r.anon = false
	disp.addAnon(-1)
	if ap := t.anon[r.pool()]; ap != nil {
		for _, list := range []*[]*connRecord{&ap.idle, &ap.used} {
			for i, x := range *list {
				if x == r {
					*list = append((*list)[:i], (*list)[i+1:]...)
					t.syncLegacyN()
					return
				}
			}
		}
	}
}

// reconcileAnon drops anonymous records that go-redis's counts no longer
// allow: more anonymous holds (or idle connections) in a pool than its
// in-use (idle) count less the identified ones.
func (t *Tracker) reconcileAnon() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for pool, ap := range t.anon {
		if len(ap.idle) == 0 && len(ap.used) == 0 {
			delete(t.anon, pool)
			continue
		}
		idle, used := ap.kind.counts(ap.client.PoolStats())
		knownIdle, knownUsed := t.identifiedLocked(pool)
		idle -= knownIdle
		used -= knownUsed
		for _, x := range []struct {
			list *[]*connRecord
			max  int
		}{{&ap.idle, idle}, {&ap.used, used}} {
			for len(*x.list) > max(x.max, 0) {
				r := (*x.list)[0]
				*x.list = (*x.list)[1:]
				r.anon = false
				r.state.Store(stClosed)
				delete(t.records, r)
				disp.addAnon(-1)
			}
		}
	}
	t.syncLegacyN()
}

// identifiedLocked counts the identified (not anonymous) records of pool
// that are idle and in use. Called with t.mu held.
func (t *Tracker) identifiedLocked(pool string) (idle, used int) {
	for r := range t.records {
		if r.anon || r.pool() != pool {
			continue
		}
		switch r.state.Load() {
		case stIdle:
			idle++
		case stUsed:
			used++
		}
	}
	return idle, used
}
