package keyspace

import (
	"fmt"
	"sort"
	"strconv"
)

// handler is one registration made with Handle or HandleEvents.
type handler struct {
	glob   string
	events map[string]struct{} // nil: every event
	fn     func(Event)
}

// route connects a subscribed pattern to a handler and says what the
// manager must still check locally: the event name on a keyspace channel
// (the server matched the key), the key on a keyevent channel (the server
// matched the event).
type route struct {
	h        *handler
	keyspace bool
}

func (r route) accepts(ev *Event) bool {
	if r.keyspace {
		if r.h.events == nil {
			return true
		}
		_, ok := r.h.events[ev.Event]
		return ok
	}
	return r.h.glob == "*" || globMatch(r.h.glob, ev.Key)
}

// patternRoutes is what arrives on one subscribed pattern.
type patternRoutes struct {
	keyspace bool
	routes   []route
}

// routeTable is an immutable snapshot of the subscriptions the handlers
// need; the manager swaps it atomically when a handler is added.
type routeTable struct {
	byPattern map[string]*patternRoutes
	patterns  []string // sorted keys of byPattern
}

// channelPrefixes returns the keyspace and keyevent channel prefixes for db.
func channelPrefixes(db int) (keyspace, keyevent string) {
	d := strconv.Itoa(db)
	return "__keyspace@" + d + "__:", "__keyevent@" + d + "__:"
}

// buildRoutes chooses the channels each handler needs:
//   - a handler with an event filter, when E is on: one keyevent channel per
//     event (__keyevent@<db>__:<event>); the key glob is matched locally;
//   - otherwise, when K is on: the keyspace channel of its key glob
//     (__keyspace@<db>__:<glob>); an event filter is applied locally;
//   - otherwise (E only, no filter): __keyevent@<db>__:* and the key glob
//     is matched locally.
//
// Each handler hangs off exactly its own patterns, so an event that matches
// the patterns of two handlers reaches each of them once.
func buildRoutes(handlers []*handler, fs flagSet, db int) *routeTable {
	ksPrefix, kePrefix := channelPrefixes(db)
	rt := &routeTable{byPattern: map[string]*patternRoutes{}}
	add := func(pattern string, keyspace bool, h *handler) {
		pr := rt.byPattern[pattern]
		if pr == nil {
			pr = &patternRoutes{keyspace: keyspace}
			rt.byPattern[pattern] = pr
			rt.patterns = append(rt.patterns, pattern)
		}
		pr.routes = append(pr.routes, route{h: h, keyspace: keyspace})
	}
	for _, h := range handlers {
		switch {
		case h.events != nil && fs&flagKeyevent != 0:
			names := make([]string, 0, len(h.events))
			for ev := range h.events {
				names = append(names, ev)
			}
			sort.Strings(names)
			for _, ev := range names {
				add(kePrefix+globEscape(ev), false, h)
			}
		case fs&flagKeyspace != 0:
			add(ksPrefix+h.glob, true, h)
		default:
			add(kePrefix+"*", false, h)
		}
	}
	sort.Strings(rt.patterns)
	return rt
}

// validateHandler checks a registration against the manager's flags.
func validateHandler(keyPattern string, fn func(Event), events []string, fs flagSet, flags string) (*handler, error) {
	if keyPattern == "" {
		return nil, fmt.Errorf("%w: empty key pattern (use \"*\" for every key)", ErrInvalidOptions)
	}
	if fn == nil {
		return nil, fmt.Errorf("%w: nil handler for %q", ErrInvalidOptions, keyPattern)
	}
	h := &handler{glob: keyPattern, fn: fn}
	if len(events) > 0 {
		h.events = make(map[string]struct{}, len(events))
		for _, ev := range events {
			if ev == "" {
				return nil, fmt.Errorf("%w: empty event name for %q", ErrInvalidOptions, keyPattern)
			}
			if class, ok := eventClass[ev]; ok && fs&class == 0 {
				return nil, fmt.Errorf("%w: event %q needs flag %q, which Flags %q lack", ErrInvalidOptions, ev, class.String(), flags)
			}
			h.events[ev] = struct{}{}
		}
	}
	return h, nil
}
