// The verdict on one hold: its kind, owner, threshold, idle time and whether
// it is long-lived (by mark, nature or behaviour) or leaked.

package redisleak

import "time"

// holdView is one record's evaluation at a point in time.
type holdView struct {
	rec       *connRecord
	seq       uint64
	held      time.Duration
	threshold time.Duration
	kind      Kind
	owner     string
	longLived bool
	leaked    bool
	by        string        // Leak.LongLivedBy
	idle      time.Duration // Leak.IdleFor; -1 until computed (idleFor)
}

// evaluate classifies a record's current hold; ok is false when it is not
// held.
func (t *Tracker) evaluate(r *connRecord, now int64) (v holdView, ok bool) {
	if r.state.Load() != stUsed {
		return v, false
	}
	acq := r.acquiredAt.Load()
	v.rec = r
	v.seq = r.holdSeq.Load()
	v.held = time.Duration(now - acq)
	v.kind = r.kind()
	legacyUntil := int64(0)
	if r.conn == nil && v.kind != KindPubSub && r.blockDeadline.Load() == 0 {
		// no wrapper: a blocking command noted by the hook (hooks.go)
		if u, ok := t.legacyBlock.Load(r.holderG.Load()); ok {
			v.kind, legacyUntil = KindBlocking, u.(int64)
		}
	}
	m := r.mark.Load()
	if m == nil && v.kind == KindPubSub {
		m = r.dialMark
	}
	if m != nil {
		v.owner = m.owner
		if m.longLived {
			v.longLived, v.by = true, LongLivedMark
		}
	}
	if v.kind == KindPubSub && r.dialMark != nil {
		if v.owner == "" {
			v.owner = r.dialMark.owner
		}
		if r.dialMark.longLived && !v.longLived {
			v.longLived, v.by = true, LongLivedMark
		}
	}
	v.threshold = t.threshold(v.kind, m)
	v.idle = -1 // computed below when the behaviour rule needs it, else by leakOf
	if !v.longLived {
		switch v.kind {
		case KindPubSub:
			v.longLived, v.by = true, LongLivedPubSub
		case KindBlocking:
			bd := r.blockDeadline.Load()
			if legacyUntil != 0 {
				bd = legacyUntil
			}
			if bd == int64(blockForever) || bd > now {
				v.longLived, v.by = true, LongLivedBlocking
				v.idle = 0 // awaiting its reply
			}
		}
	}
	switch {
	case v.longLived:
	case t.opts.AutoLongLived && v.held > v.threshold:
		// Behaviour: a hold that keeps running commands is long-lived; one
		// idle (or stuck in one command) for its threshold is a leak.
		if v.idle < 0 {
			v.idle = r.idleFor(now, v.held)
		}
		if v.idle > v.threshold {
			v.leaked = true
		} else {
			v.longLived, v.by = true, LongLivedAuto
		}
	default:
		v.leaked = v.held > v.threshold
	}
	return v, true
}

// idleFor returns Leak.IdleFor of the hold.
func (v holdView) idleFor(now int64) time.Duration {
	if v.idle >= 0 {
		return v.idle
	}
	return v.rec.idleFor(now, v.held)
}

// now returns nanotime and refreshes the wall-clock offset idleFor uses.
func (t *Tracker) now() int64 {
	wall := time.Now().UnixNano()
	n := nanotime()
	t.wallOff.Store(wall - n)
	return n
}

func (t *Tracker) threshold(kind Kind, m *mark) time.Duration {
	if m != nil && m.maxHold > 0 {
		return m.maxHold
	}
	if d, ok := t.opts.KindMaxHold[kind]; ok && d > 0 {
		return d
	}
	return t.opts.MaxHold
}

func (t *Tracker) leakOf(v holdView, now int64) Leak {
	r := v.rec
	site := ""
	if r.pre && v.seq == 1 {
		site = siteBeforeInstrument
	}
	return Leak{
		Site:        site,
		ConnID:      r.id,
		Kind:        v.kind,
		Owner:       v.owner,
		Pool:        r.pool(),
		Addr:        r.addr,
		AcquiredAt:  unixAt(now - int64(v.held)),
		HeldFor:     v.held,
		MaxHold:     v.threshold,
		LongLived:   v.longLived,
		Leaked:      v.leaked,
		LongLivedBy: v.by,
		IdleFor:     v.idleFor(now),
	}
}
