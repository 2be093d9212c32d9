package keyspace

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/dedicated"
)

const configParam = "notify-keyspace-events"

// nodeConfig keeps one server's notify-keyspace-events setting in line with
// the manager's flags, over a dedicated connection held for the manager's
// lifetime (internal/dedicated: taken from the client's pool with the
// long-lived mark, reopened after a network error). Lock order: mu, then
// the dedicated connection's own lock.
type nodeConfig struct {
	m      *Manager
	addr   string
	client *redis.Client
	dc     *dedicated.Conn

	mu sync.Mutex
	// dropped is set when a command failed on the network, which closed
	// the dedicated connection (the next command opens a new one).
	dropped bool
	version int
	// original is the setting from before the first manager (this one or
	// another, see lease.go) changed it, when origKnown.
	original  string
	origKnown bool
	need      flagSet   // what the handlers need on this server (last check)
	leaseName string    // the client name set on the connection (lease.go); "" on a new one
	connID    int64     // the connection's client id
	adopted   bool      // looked for another manager's original once
	written   string    // the value read back after this manager's last write
	hadFlags  bool      // the last check found every needed flag
	checked   bool      // at least one check completed
	lastOK    time.Time // when a check last found every flag in place
	closed    bool
	// reported is the state of the last problem reported to OnError ("" when
	// the last check was fine): a problem that persists is reported once,
	// and again only after the state changed.
	reported string
}

// reportState reports err to OnError unless the last report was for the
// same state; state "" (with a nil err) records that all is well.
func (nc *nodeConfig) reportState(state string, err error) {
	if state == nc.reported {
		return
	}
	nc.reported = state
	if err != nil {
		nc.m.report(err)
	}
}

func newNodeConfig(m *Manager, addr string, client *redis.Client) *nodeConfig {
	return &nodeConfig{m: m, addr: addr, client: client,
		dc: dedicated.New(client, dedicated.Options{Owner: Owner, ErrClosed: ErrClosed})}
}

// doLocked runs f on the dedicated connection (opening it if needed) and
// returns f's error. After a network error the connection is closed
// (dedicated.Conn.Do): its lease name is gone with it, and the next
// command, on a new connection, names that one.
func (nc *nodeConfig) doLocked(ctx context.Context, f func(ctx context.Context, c dedicated.Cmdable) error) error {
	err := nc.dc.Do(ctx, func(ctx context.Context, h dedicated.Handle) error { return f(ctx, h.Cmd) })
	if dedicated.IsNetworkError(err) {
		nc.dropped = true
		nc.leaseName, nc.connID = "", 0
	}
	return err
}

// serverVersion reads redis_version from INFO server; 0 when the server does
// not say (miniredis).
func (nc *nodeConfig) serverVersion(ctx context.Context) (int, error) {
	var info string
	err := nc.doLocked(ctx, func(ctx context.Context, c dedicated.Cmdable) (err error) {
		info, err = c.Info(ctx, "server").Result()
		return err
	})
	if err != nil {
		if !dedicated.IsNetworkError(err) {
			return 0, nil
		}
		return 0, err
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return parseVersion(v), nil
		}
	}
	return 0, nil
}

// ensure checks (and in merge mode repairs) the server setting. repaired is
// true when flags were missing although an earlier check had found them
// (someone removed them, or the server restarted): events were lost.
// In verify and warn modes, problems that do not stop the manager are
// reported through OnError and ensure returns nil.
// lastOK is when a check last found every flag before this one.
func (nc *nodeConfig) ensure(ctx context.Context) (repaired bool, lastOK time.Time, err error) {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	if nc.closed {
		return false, time.Time{}, ErrClosed
	}
	lastOK = nc.lastOK
	start := time.Now()
	if err := nc.dc.Open(ctx); err != nil {
		return false, lastOK, nc.wrap("config", err)
	}
	nc.dropped = false
	repaired, err = nc.ensureLocked(ctx)
	if err != nil && nc.dropped && ctx.Err() == nil {
		// The dedicated connection died (server restart, failover, idle
		// timeout): one more try on a fresh one. Other errors (flags
		// missing, CONFIG denied) would only repeat.
		repaired, err = nc.ensureLocked(ctx)
	}
	if nc.hadFlags && !repaired && err == nil {
		nc.lastOK = start // the flags were there when this check read them
	}
	return repaired, lastOK, err
}

func (nc *nodeConfig) ensureLocked(ctx context.Context) (repaired bool, err error) {
	opts := nc.m.opts
	version, err := nc.serverVersion(ctx)
	if err != nil {
		return false, nc.wrap("config", err)
	}
	nc.version = version
	need, err := nc.m.flags.forVersion(version, opts.Flags)
	if err != nil {
		return false, nc.wrap("config", err)
	}
	nc.need = need
	nc.registerLocked(ctx, need)
	if opts.Config == ConfigSkip {
		return false, nil
	}
	current, err := nc.get(ctx)
	if err != nil {
		if errors.Is(err, ErrConfigUnavailable) {
			// Nothing can be read (CONFIG renamed or denied): the flags may
			// well be set (managed Redis, set in its console). Say so once
			// and go on.
			nc.reportState("unreadable", nc.wrap("config", fmt.Errorf("%w: cannot verify that the server has flags %q; going on as if it had", err, need.String())))
			return false, nil
		}
		return false, nc.wrap("config", err)
	}
	if !nc.adopted {
		// After the first read: a manager that changed the setting before
		// that read had named its lease with the original first.
		nc.adopted = true
		nc.adoptOriginalLocked(ctx)
		nc.registerLocked(ctx, need)
	}
	missing := need &^ parseServerFlags(current)
	hadBefore := nc.checked && nc.hadFlags
	nc.checked = true
	if missing == 0 {
		nc.hadFlags = true
		nc.reportState("", nil)
		return false, nil
	}
	nc.hadFlags = false
	repaired = hadBefore
	switch opts.Config {
	case ConfigVerify, ConfigWarn:
		err := nc.wrap("config", fmt.Errorf("%w: server has %q, handlers need %q (missing %q)", ErrFlagsMissing, current, need.String(), missing.String()))
		if opts.Config == ConfigVerify && !hadBefore && !nc.m.running() {
			return repaired, err
		}
		nc.reportState("missing "+current, err)
		return repaired, nil
	}
	// Merge: append what is missing, never remove. Another process may be
	// merging at the same time (CONFIG has no compare-and-set): read back
	// and retry after a short random pause (writers in lockstep would undo
	// each other again); the periodic check repairs a write lost after that.
	for try := 0; try < mergeTries; try++ {
		if try > 0 {
			pause := time.Duration(1+rand.IntN(4*try)) * time.Millisecond
			select {
			case <-ctx.Done():
				return repaired, nc.wrap("config", ctx.Err())
			case <-time.After(pause):
			}
			if current, err = nc.get(ctx); err != nil {
				return repaired, nc.wrap("config", err)
			}
			if need&^parseServerFlags(current) == 0 {
				nc.hadFlags = true
				nc.reportState("", nil)
				return repaired, nil
			}
		}
		merged, _ := mergeFlags(current, need)
		if !nc.origKnown {
			// The first write of all managers: record the original in the
			// lease before writing, for whoever restores.
			nc.adoptOriginalLocked(ctx)
			if !nc.origKnown {
				nc.original, nc.origKnown = current, true
			}
			nc.registerLocked(ctx, need)
		}
		err := nc.doLocked(ctx, func(ctx context.Context, c dedicated.Cmdable) error {
			return c.ConfigSet(ctx, configParam, merged).Err()
		})
		if err != nil {
			if dedicated.IsNetworkError(err) {
				return repaired, nc.wrap("config", err)
			}
			missing := need &^ parseServerFlags(current)
			err = nc.wrap("config", fmt.Errorf("%w: server has %q, handlers need %q: missing %q, and CONFIG SET %s %q failed: %v (set the flags where the server is managed, or use ConfigVerify or ConfigSkip)",
				ErrConfigUnavailable, current, need.String(), missing.String(), configParam, merged, err))
			if !nc.m.running() {
				return repaired, err // Start fails: the flags are known to be missing
			}
			nc.reportState("unsettable "+current, err)
			return repaired, nil
		}
		if current, err = nc.get(ctx); err != nil {
			return repaired, nc.wrap("config", err)
		}
		nc.written = current
		if need&^parseServerFlags(current) == 0 {
			nc.hadFlags = true
			nc.reportState("", nil)
			return repaired, nil
		}
	}
	return repaired, nc.wrap("config", fmt.Errorf("%w: setting keeps changing under us (now %q, need %q)", ErrFlagsMissing, current, need.String()))
}

// mergeTries bounds the write-and-read-back rounds of one merge.
const mergeTries = 10

func (nc *nodeConfig) get(ctx context.Context) (string, error) {
	var vals map[string]string
	err := nc.doLocked(ctx, func(ctx context.Context, c dedicated.Cmdable) (err error) {
		vals, err = c.ConfigGet(ctx, configParam).Result()
		return err
	})
	if err != nil {
		if !dedicated.IsNetworkError(err) {
			return "", fmt.Errorf("%w: CONFIG GET %s: %v", ErrConfigUnavailable, configParam, err)
		}
		return "", err
	}
	return vals[configParam], nil
}

// close releases the dedicated connection. Safe to call twice.
func (nc *nodeConfig) close() {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	nc.closed = true
	if nc.leaseName != "" {
		// The connection (open: a network error would have cleared
		// leaseName) goes back to the client's pool: end the lease
		// (lease.go) and give it the client's own name back. Should that
		// fail on the network, the connection is closed instead of pooled;
		// where CLIENT SETNAME is denied, the name was never set either.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = nc.doLocked(ctx, func(ctx context.Context, c dedicated.Cmdable) error {
			return c.Do(ctx, "client", "setname", nc.client.Options().ClientName).Err()
		})
		cancel()
		nc.leaseName, nc.connID = "", 0
	}
	_ = nc.dc.Close()
}

func (nc *nodeConfig) wrap(op string, err error) error {
	var ne *NodeError
	if errors.As(err, &ne) {
		return err
	}
	return &NodeError{Node: nc.addr, Op: op, Err: err}
}
