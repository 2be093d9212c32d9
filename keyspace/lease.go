package keyspace

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/dedicated"
)

// Leases: what the managers of every process need from a server's
// notify-keyspace-events setting, kept in Redis itself.
//
// Each manager's dedicated connection to a server carries a client name
// (CLIENT SETNAME) of the form
//
//	keyspace|<flags it needs>|<original value>
//
// where the original value, the setting from before the first manager
// changed it, is left out (with its "|") while this manager does not know
// it. The connection is the lease: it lasts while the manager runs, and
// ends when the manager closes or its process dies (the kernel closes the
// socket; a vanished host is noticed by the server's tcp-keepalive). No
// clocks, no refreshing, and nothing to clean up, also in a cluster, where
// each primary has its own leases.
//
// A manager that writes the setting first records the original in its
// lease before it writes; a manager that finds it already changed adopts
// the original from the lease of another. On Close with RestoreOnClose a
// manager reads the other leases (CLIENT LIST) and sets the original plus
// whatever the others still need: the last one to leave restores the
// original. Where CLIENT LIST is unavailable the setting is left alone.

// leasePrefix starts the client name of a manager's config connection.
const leasePrefix = Owner + "|"

// lease is another manager's lease on a server.
type lease struct {
	need      flagSet
	original  string
	knowsOrig bool
}

// leaseName is the client name for a lease.
func leaseName(need flagSet, original string, knowsOrig bool) string {
	n := leasePrefix + need.String()
	if knowsOrig {
		n += "|" + original
	}
	return n
}

// parseLease parses a client name; ok is false when it is not a lease.
func parseLease(name string) (l lease, ok bool) {
	rest, ok := strings.CutPrefix(name, leasePrefix)
	if !ok {
		return lease{}, false
	}
	need, orig, knows := strings.Cut(rest, "|")
	return lease{need: parseServerFlags(need), original: orig, knowsOrig: knows}, true
}

// registerLocked names the dedicated connection after the lease (once per
// connection and change). Errors are ignored: where CLIENT SETNAME is
// denied there is no lease, and a restoring manager elsewhere cannot see
// this one's needs (the periodic check repairs the setting).
func (nc *nodeConfig) registerLocked(ctx context.Context, need flagSet) {
	name := leaseName(need, nc.original, nc.origKnown)
	if nc.leaseName == name {
		return // set on this connection (a new one starts with "")
	}
	var id *redis.IntCmd
	err := nc.doLocked(ctx, func(ctx context.Context, c dedicated.Cmdable) error {
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.ClientSetName(ctx, name)
			id = p.ClientID(ctx)
			return nil
		})
		return err
	})
	if err != nil {
		if !dedicated.IsNetworkError(err) {
			nc.leaseName, nc.connID = name, 0 // denied: do not retry on this connection
		}
		return
	}
	nc.leaseName, nc.connID = name, id.Val()
}

// othersLocked returns the leases of the other managers on the server.
func (nc *nodeConfig) othersLocked(ctx context.Context) ([]lease, error) {
	var list string
	err := nc.doLocked(ctx, func(ctx context.Context, c dedicated.Cmdable) (err error) {
		list, err = c.ClientList(ctx).Result()
		return err
	})
	if err != nil {
		return nil, err
	}
	var out []lease
	for _, line := range strings.Split(list, "\n") {
		var id int64
		var l lease
		var isLease bool
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "id="); ok {
				id, _ = strconv.ParseInt(v, 10, 64)
			} else if v, ok := strings.CutPrefix(f, "name="); ok {
				l, isLease = parseLease(v)
			}
		}
		if isLease && id != nc.connID {
			out = append(out, l)
		}
	}
	return out, nil
}

// adoptOriginalLocked takes the original value from another manager's
// lease, where this manager does not know it.
func (nc *nodeConfig) adoptOriginalLocked(ctx context.Context) {
	if nc.origKnown {
		return
	}
	others, err := nc.othersLocked(ctx)
	if err != nil {
		return
	}
	for _, l := range others {
		if l.knowsOrig {
			nc.original, nc.origKnown = l.original, true
			return
		}
	}
}

// restore puts back the value from before the first manager changed it,
// plus what other live managers still need (their leases), unless someone
// else changed the setting since: it is not what this manager wrote last
// and has a flag that neither the original nor a live manager explains.
func (nc *nodeConfig) restore(ctx context.Context) error {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	if nc.m.opts.Config != ConfigMerge || !nc.origKnown || nc.closed {
		return nil // only merge writes; and no manager is known to have changed it
	}
	others, err := nc.othersLocked(ctx)
	if err != nil {
		return nc.wrap("restore", fmt.Errorf("cannot see the other managers' needs (CLIENT LIST: %v): setting left alone", err))
	}
	var othersNeed flagSet
	for _, l := range others {
		othersNeed |= l.need
	}
	current, err := nc.get(ctx)
	if err != nil {
		return nc.wrap("restore", err)
	}
	// Changed by someone else? Not if this manager wrote it last (the
	// value is the one it read back then), nor if every flag in it is
	// explained by the original or a manager's needs.
	orig := parseServerFlags(nc.original)
	if extra := parseServerFlags(current) &^ (orig | nc.need | othersNeed); extra != 0 && current != nc.written {
		return nc.wrap("restore", fmt.Errorf("setting is %q: %q was set by someone else since: left alone", current, extra.String()))
	}
	target, _ := mergeFlags(nc.original, othersNeed)
	if parseServerFlags(target) == parseServerFlags(current) {
		return nil // nothing to remove: the others need it all
	}
	if err := nc.configSetLocked(ctx, target); err != nil {
		return nc.wrap("restore", err)
	}
	// A manager that started meanwhile may have found its flags there and
	// just lost them: give them back.
	if again, err := nc.othersLocked(ctx); err == nil {
		var need flagSet
		for _, l := range again {
			need |= l.need
		}
		if merged, ok := mergeFlags(target, need); ok {
			if err := nc.configSetLocked(ctx, merged); err != nil {
				return nc.wrap("restore", err)
			}
		}
	}
	return nil
}

// configSetLocked writes the setting on the dedicated connection.
func (nc *nodeConfig) configSetLocked(ctx context.Context, value string) error {
	return nc.doLocked(ctx, func(ctx context.Context, c dedicated.Cmdable) error {
		return c.ConfigSet(ctx, configParam, value).Err()
	})
}
