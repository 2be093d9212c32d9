package redisleak

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/metric"
)

// Defaults of Options.
const (
	DefaultMaxHold       = 30 * time.Second
	DefaultScanInterval  = 10 * time.Second
	DefaultBlockingGrace = 10 * time.Second
	DefaultRepeatWarning = time.Minute
	maxStackDepth        = 64
	defaultStackDepth    = 32
)

// LeakAction says what the tracker does about a detected leak besides
// reporting it.
type LeakAction int

const (
	// ActionWarn reports leaks (log, OnLeak, metrics) and does nothing else.
	// The default.
	ActionWarn LeakAction = iota
	// ActionClose also closes the leaked connection's socket, which ends
	// its server-side session (locks, WATCH, CLIENT state) and counts in
	// Stats.LeaksClosed. It does not by itself free the pool slot: go-redis
	// offers no way to take a connection back from its holder, so the slot
	// stays taken until the holder next uses the connection (the call fails
	// with a network error and go-redis discards the connection) or closes
	// it; then Stats.LeaksFreed counts it. A Conn that is never touched
	// again keeps its slot.
	//
	// With Options.CloseAbove > 0 a leak is closed only while its pool is
	// more than that fraction in use. Connections opened before the tracker
	// was attached (no wrapper) are never closed.
	ActionClose
)

// Options configures a Tracker. The zero value works: every zero field takes
// its documented default.
type Options struct {
	// MaxHold is how long a hold may last before it is a leak, unless it is
	// long-lived. 0 means DefaultMaxHold (30s).
	MaxHold time.Duration
	// ScanInterval is the period of the background leak scan. 0 means
	// DefaultScanInterval (10s); below MinScanInterval (10ms) is an error.
	ScanInterval time.Duration
	// Logger receives leak warnings and follow-ups. nil means slog.Default().
	Logger *slog.Logger
	// OnLeak is called once for each newly detected leak, from the scanning
	// goroutine (or the goroutine calling Scan), after the scan. It may call
	// the tracker's methods; it should not block for long (the next
	// background scan waits for it).
	OnLeak func(Leak)

	// AutoLongLived turns on recognising long-lived holds by behaviour: a
	// hold past its threshold whose connection keeps running commands is
	// long-lived (Leak.LongLivedBy "auto", counted in Stats.LongLived and
	// Stats.AutoLongLived), and a hold is a leak once its connection has
	// been idle for its threshold (measured from its last command, so a Conn
	// that worked for an hour and was then forgotten is reported one
	// threshold after it went quiet). A single command running past its
	// threshold is still a leak, unless it is a blocking command within its
	// own timeout. Off by default: then a hold is a leak once it is older
	// than its threshold, however busy.
	AutoLongLived bool

	// KindMaxHold overrides MaxHold per hold kind (KindCommand, KindConn,
	// KindTx, KindPipeline, KindBlocking, KindPubSub). A per-call threshold
	// set with WithMaxHold takes precedence over both.
	KindMaxHold map[Kind]time.Duration
	// BlockingGrace is added to a blocking command's own timeout before its
	// hold may count as a leak. 0 means DefaultBlockingGrace (10s, what
	// go-redis itself waits beyond the timeout); smaller positive values
	// are an error.
	BlockingGrace time.Duration

	// FullStacks adds the whole acquisition stack to each Leak (Leak.Stack).
	FullStacks bool
	// StackDepth bounds captured stacks, in frames. 0 means 32; at most 64.
	StackDepth int

	// Action is what happens to a leaked connection besides reporting it.
	Action LeakAction
	// CloseAbove, with ActionClose, closes leaks only while their pool's
	// in-use share exceeds it (e.g. 0.8). 0 means always. Must be in [0, 1).
	CloseAbove float64
	// RepeatWarning is the minimum interval between reminders that reported
	// leaks are still held. 0 means DefaultRepeatWarning (1m); negative
	// turns reminders off.
	RepeatWarning time.Duration

	// MeterProvider provides the tracker's OpenTelemetry metrics (their
	// names and attributes are listed in the package doc, Metrics). nil
	// means the global provider (otel.GetMeterProvider()).
	MeterProvider metric.MeterProvider
	// ChainRecorder is a go-redis OTel recorder (redis.SetOTelRecorder) that
	// should keep receiving every event: go-redis has one process-wide
	// recorder slot, which the tracker takes. When the last tracker closes,
	// this recorder is put back.
	ChainRecorder redis.OTelRecorder
	// HandlerShowSites includes acquisition sites (source paths) in the JSON
	// of Handler. Off by default: they reveal source paths.
	HandlerShowSites bool
	// DisablePoolTimeoutDetail keeps go-redis's bare redis.ErrPoolTimeout
	// instead of a *PoolTimeoutError that names the holders.
	DisablePoolTimeoutDetail bool
	// Name names the client in the tracker's metrics: the attribute
	// redisleak.client on every data point, so that several instrumented
	// clients on one MeterProvider stay apart. Empty means a name derived
	// from the client: its address ("127.0.0.1:6379"), "cluster:<first
	// address>", "ring:<lowest address>" or "failover", with "#2", "#3", ...
	// appended while another live tracker already uses it. See Tracker.Name.
	Name string
}

// MinScanInterval is the shortest Options.ScanInterval: a scan walks every
// tracked connection, and shorter periods would spend a core on it.
const MinScanInterval = 10 * time.Millisecond

func (o Options) normalize() (Options, error) {
	var errs []error
	if o.MaxHold < 0 {
		errs = append(errs, fmt.Errorf("MaxHold %v is negative", o.MaxHold))
	}
	if o.ScanInterval < 0 {
		errs = append(errs, fmt.Errorf("ScanInterval %v is negative", o.ScanInterval))
	} else if o.ScanInterval > 0 && o.ScanInterval < MinScanInterval {
		errs = append(errs, fmt.Errorf("ScanInterval %v: must be 0 (default) or at least %v", o.ScanInterval, MinScanInterval))
	}
	if o.BlockingGrace < 0 || (o.BlockingGrace > 0 && o.BlockingGrace < DefaultBlockingGrace) {
		errs = append(errs, fmt.Errorf("BlockingGrace %v: must be 0 (default) or at least %v, what go-redis waits beyond a blocking timeout", o.BlockingGrace, DefaultBlockingGrace))
	}
	if o.StackDepth < 0 || o.StackDepth > maxStackDepth {
		errs = append(errs, fmt.Errorf("StackDepth %d: must be 0..%d", o.StackDepth, maxStackDepth))
	}
	if o.Action != ActionWarn && o.Action != ActionClose {
		errs = append(errs, fmt.Errorf("Action %d is unknown", o.Action))
	}
	if o.CloseAbove < 0 || o.CloseAbove >= 1 {
		errs = append(errs, fmt.Errorf("CloseAbove %v: must be in [0, 1)", o.CloseAbove))
	}
	if o.CloseAbove > 0 && o.Action != ActionClose {
		errs = append(errs, errors.New("CloseAbove is set but Action is not ActionClose"))
	}
	for k, v := range o.KindMaxHold {
		if _, ok := kindOf(k); !ok {
			errs = append(errs, fmt.Errorf("KindMaxHold: unknown kind %q", k))
		}
		if v < 0 {
			errs = append(errs, fmt.Errorf("KindMaxHold[%q] %v is negative", k, v))
		}
	}
	if len(errs) > 0 {
		return o, fmt.Errorf("redisleak: invalid options: %w", errors.Join(errs...))
	}
	if o.MaxHold == 0 {
		o.MaxHold = DefaultMaxHold
	}
	if o.ScanInterval == 0 {
		o.ScanInterval = DefaultScanInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.BlockingGrace == 0 {
		o.BlockingGrace = DefaultBlockingGrace
	}
	if o.StackDepth == 0 {
		o.StackDepth = defaultStackDepth
	}
	if o.RepeatWarning == 0 {
		o.RepeatWarning = DefaultRepeatWarning
	}
	return o, nil
}

// Mode is how a tracker learns of holds, as in Stats.ObserverMode. Its
// values are strings in JSON.
type Mode string

// Observer modes.
const (
	// ModeObserver: go-redis's connection-state observer reaches the
	// tracker; holds are exact per connection.
	ModeObserver Mode = "observer"
	// ModeHooks: something replaced the observer (another
	// redis.SetOTelRecorder call); the tracker sees only what hooks see:
	// commands in flight, and pool counts from PoolStats.
	ModeHooks Mode = "hooks"
)

// ClientKind is the kind of go-redis client a tracker is attached to, as
// in Stats.ClientKind and the redis.client.kind metric attribute. Its
// values are strings in JSON.
type ClientKind string

// Client kinds.
const (
	ClientKindClient   ClientKind = "client"   // a *redis.Client
	ClientKindFailover ClientKind = "failover" // a *redis.Client from redis.NewFailoverClient
	ClientKindCluster  ClientKind = "cluster"  // a *redis.ClusterClient
	ClientKindRing     ClientKind = "ring"     // a *redis.Ring
)

// Tracker tracks the connection holds of one go-redis client. It is safe for
// concurrent use. Create it with Instrument; stop it with Close.
type Tracker struct {
	opts       Options
	client     redis.UniversalClient
	clientKind ClientKind

	closed    atomic.Bool
	closeOnce sync.Once
	stop      chan struct{}
	wg        sync.WaitGroup
	cancel    context.CancelFunc

	mu      sync.Mutex
	records map[*connRecord]struct{}
	legacy  map[redis.ConnInfo]*connRecord
	anon    map[string]*anonPool // connections not yet identified, by pool (attach.go)
	// legacyN counts connections without a wrapper (legacy and anon; see
	// syncLegacyN); legacyBlock maps a goroutine running a blocking command
	// to its exemption deadline while legacyN > 0.
	legacyN     atomic.Int64
	legacyBlock sync.Map
	// hookSlow is legacyN plus one in hooks mode: the process hook's common
	// case reads this one word (see setHooksMode, syncLegacyN).
	hookSlow atomic.Int64
	// wallOff is wall-clock minus nanotime, refreshed by every scan, Stats
	// and Holds (idleFor compares go-redis's wall-clock last-use times).
	wallOff atomic.Int64
	nodes   map[*redis.Client]struct{}
	// poolNames interns pool names (one string per pool, not per connection)
	poolNames sync.Map
	// stacks interns the acquisition stacks of sticky holds (internPCs):
	// holds taken at one place share one copy.
	stacksMu sync.RWMutex
	stacks   map[string][]uintptr
	nextID   atomic.Uint64

	// leak reporting state, guarded by scanMu
	scanMu       sync.Mutex
	lastReminder time.Time
	hooksMode    atomic.Bool // ModeHooks: the observer no longer reaches the tracker
	lastGen      uint64
	lastPoolOps  uint64

	leaksTotal    atomic.Uint64
	closedLeaks   atomic.Uint64
	poolTimeouts  atomic.Uint64
	returnedNotes chan returnedNote

	callbacks  callbackQueue
	autoSites  map[string]bool // sites announced as long-lived by behaviour (scanMu)
	freedLeaks atomic.Uint64

	holds holdRecorder // in the Tracker: endUsed reaches it without a load
	inflight
	metrics *trackerMetrics
}

type returnedNote struct {
	held time.Duration
	leak Leak
}

var errNilClient = errors.New("redisleak: Instrument: nil client")

// Instrument attaches a tracker to rdb: a *redis.Client (failover clients
// included), *redis.ClusterClient or *redis.Ring; anything else is an error.
// Holds that start after Instrument returns are exact; connections opened
// earlier are tracked from their next state change. The tracker cannot be
// detached from the client: Close stops it and makes its hooks inert.
func Instrument(rdb redis.UniversalClient, opts Options) (*Tracker, error) {
	if rdb == nil {
		return nil, errNilClient
	}
	o, err := opts.normalize()
	if err != nil {
		return nil, err
	}
	t := &Tracker{
		opts:          o,
		client:        rdb,
		stop:          make(chan struct{}),
		records:       make(map[*connRecord]struct{}),
		legacy:        make(map[redis.ConnInfo]*connRecord),
		nodes:         make(map[*redis.Client]struct{}),
		returnedNotes: make(chan returnedNote, 256),
	}
	switch c := rdb.(type) {
	case *redis.Client:
		if c == nil {
			return nil, errNilClient
		}
		t.clientKind = ClientKindClient
		if c.Options().Addr == "FailoverClient" {
			t.clientKind = ClientKindFailover
		}
	case *redis.ClusterClient:
		if c == nil {
			return nil, errNilClient
		}
		t.clientKind = ClientKindCluster
	case *redis.Ring:
		if c == nil {
			return nil, errNilClient
		}
		t.clientKind = ClientKindRing
	default:
		return nil, fmt.Errorf("redisleak: Instrument: unsupported client type %T (want *redis.Client, *redis.ClusterClient or *redis.Ring)", rdb)
	}
	if err := disp.attach(t, o.ChainRecorder); err != nil {
		return nil, err
	}
	t.metrics, err = newTrackerMetrics(t, o.MeterProvider)
	if err != nil {
		disp.detach(t)
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.cancel = cancel

	switch c := rdb.(type) {
	case *redis.Client:
		t.attachNode(c, true)
	case *redis.ClusterClient:
		c.AddHook(&hook{t: t, top: true})
		c.OnNewNode(func(n *redis.Client) { t.attachNode(n, false) })
		// Nodes that exist already, synchronously when the cluster state is
		// loaded: with a cancelled context ForEachShard's reload fails at
		// once and it falls back to the current state (no I/O).
		done, cancelDone := context.WithCancel(ctx)
		cancelDone()
		_ = c.ForEachShard(done, func(_ context.Context, n *redis.Client) error {
			t.attachNode(n, false)
			return nil
		})
		t.wg.Add(1)
		go func() {
			// Reach nodes that exist already. ForEachShard may load the
			// cluster state (network I/O), so it runs in the background;
			// nodes it creates are announced through OnNewNode first.
			defer t.wg.Done()
			sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
			defer scancel()
			_ = c.ForEachShard(sctx, func(_ context.Context, n *redis.Client) error {
				t.attachNode(n, false)
				return nil
			})
		}()
	case *redis.Ring:
		c.AddHook(&hook{t: t, top: true})
		c.OnNewNode(func(n *redis.Client) { t.attachNode(n, false) })
		for _, n := range c.GetShardClients() {
			t.attachNode(n, false)
		}
	}

	if o.OnLeak != nil {
		t.startCallbacks()
	}
	t.wg.Add(1)
	go t.scanLoop()
	return t, nil
}

// attachNode adds the dial hook (and, for a plain client, the process hooks)
// to a node client once.
func (t *Tracker) attachNode(c *redis.Client, top bool) {
	if t.closed.Load() || c == nil {
		return
	}
	t.mu.Lock()
	if _, ok := t.nodes[c]; ok {
		t.mu.Unlock()
		return
	}
	t.nodes[c] = struct{}{}
	t.mu.Unlock()
	// Connections that exist already are counted before the dial hook is
	// added: every connection dialed later is wrapped, none is counted twice.
	t.adoptExisting(c)
	c.AddHook(&hook{t: t, top: top, dial: true})
}

// internPool returns one shared *string per pool name (or address).
func (t *Tracker) internPool(name string) *string {
	if p, ok := t.poolNames.Load(name); ok {
		return p.(*string)
	}
	p, _ := t.poolNames.LoadOrStore(name, &name)
	return p.(*string)
}

// maxInternedStacks bounds Tracker.stacks: past it, a stack not seen yet
// gets a copy of its own.
const maxInternedStacks = 1024

// internPCs returns a copy of pcs shared by every caller with the same
// stack, never to be changed: a service holding 10,000 Client.Conn taken
// in one function keeps one acquisition stack, not 10,000.
func (t *Tracker) internPCs(pcs []uintptr) []uintptr {
	if len(pcs) == 0 {
		return nil
	}
	key := pcsKey(pcs) // over pcs: only for the lookups
	t.stacksMu.RLock()
	s, ok := t.stacks[key]
	t.stacksMu.RUnlock()
	if ok {
		return s
	}
	s = append([]uintptr(nil), pcs...)
	t.stacksMu.Lock()
	defer t.stacksMu.Unlock()
	if old, ok := t.stacks[key]; ok {
		return old
	}
	if len(t.stacks) < maxInternedStacks {
		if t.stacks == nil {
			t.stacks = make(map[string][]uintptr)
		}
		t.stacks[pcsKey(s)] = s // the key is s's memory, which never changes
	}
	return s
}

// pcsKey is pcs's memory as a string, without a copy.
func pcsKey(pcs []uintptr) string {
	return unsafe.String((*byte)(unsafe.Pointer(unsafe.SliceData(pcs))), len(pcs)*int(unsafe.Sizeof(pcs[0])))
}

// newRecord registers a freshly dialed connection.
func (t *Tracker) newRecord(ctx context.Context, addr string) *connRecord {
	r := &connRecord{tr: t, id: t.nextID.Add(1), addr: *t.internPool(addr)}
	r.dialMark = markFrom(ctx)
	// Keep the dial stack only when it names a site: pooled connections are
	// dialed on go-redis's background goroutine (nothing to name); PubSub
	// connections are dialed by the caller of Subscribe.
	var pcs [maxStackDepth]uintptr
	n := runtime.Callers(3, pcs[:t.opts.StackDepth])
	if site, _ := sitesFromPCs(pcs[:n], false); site != "" {
		r.cold = &recordCold{dialPCs: t.internPCs(pcs[:n])} // before r is published
	}
	t.mu.Lock()
	t.records[r] = struct{}{}
	t.mu.Unlock()
	return r
}

// legacyRecord returns the record of a connection opened before the
// tracker, creating it on its first event. from is the state the connection
// was in before that event (stNew: unknown): an anonymous record of its pool
// in that state, counted when the tracker was attached, becomes its record.
func (t *Tracker) legacyRecord(cn redis.ConnInfo, from uint32) *connRecord {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed.Load() {
		return nil
	}
	r := t.legacy[cn]
	if r != nil {
		return r
	}
	defer func() { r.setInfo(cn) }()
	if from != stNew {
		r = t.claimAnon(cn.PoolName(), from)
	}
	if r == nil {
		r = &connRecord{tr: t, id: t.nextID.Add(1)}
		r.setPool(cn.PoolName())
		t.records[r] = struct{}{}
	}
	if r.addr == "" {
		if a := cn.RemoteAddr(); a != nil {
			r.addr = a.String()
		}
	}
	t.legacy[cn] = r
	t.syncLegacyN()
	return r
}

// dropRecord forgets a closed connection.
func (t *Tracker) dropRecord(r *connRecord, cn redis.ConnInfo) {
	if r.actionClosed.CompareAndSwap(true, false) {
		t.freedLeaks.Add(1)
		t.opts.Logger.Info("redisleak: a connection closed by ActionClose was discarded by go-redis: its pool slot is free again",
			slog.Uint64("connId", r.id), slog.String("pool", r.pool()))
	}
	if r.state.Load() == stUsed {
		r.endHold()
	}
	r.state.Store(stClosed)
	disp.uncache(r)
	t.mu.Lock()
	delete(t.records, r)
	if cn != nil {
		delete(t.legacy, cn)
		t.syncLegacyN()
	}
	t.forgetAnon(r)
	t.mu.Unlock()
}

// snapshotRecords copies the record set.
func (t *Tracker) snapshotRecords() []*connRecord {
	t.mu.Lock()
	out := make([]*connRecord, 0, len(t.records))
	for r := range t.records {
		out = append(out, r)
	}
	t.mu.Unlock()
	return out
}

// noteReturned queues the follow-up for a reported leak that came back.
// Called from the observer: never blocks.
func (t *Tracker) noteReturned(r *connRecord, held int64) {
	var l Leak
	if lr := r.reported(); lr != nil {
		l = *lr
	}
	select {
	case t.returnedNotes <- returnedNote{held: time.Duration(held), leak: l}:
	default:
	}
}

func (t *Tracker) scanLoop() {
	defer t.wg.Done()
	tick := time.NewTicker(t.opts.ScanInterval)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
			t.checkMode()
			t.scan(true)
		case n := <-t.returnedNotes:
			t.logReturned(n)
		}
	}
}

func (t *Tracker) logReturned(n returnedNote) {
	t.opts.Logger.Info("redisleak: connection previously reported as leaked was returned",
		slog.Uint64("connId", n.leak.ConnID),
		slog.String("kind", string(n.leak.Kind)),
		slog.String("owner", n.leak.Owner),
		slog.String("site", n.leak.Site),
		slog.Float64("heldForMs", float64(n.held)/float64(time.Millisecond)))
}

// Close stops the tracker: its goroutines end, its hooks go inert, and the
// last tracker to close puts back the recorder it chained (or none).
// Close is idempotent and safe to call concurrently; it always returns nil.
func (t *Tracker) Close() error {
	t.closeOnce.Do(func() {
		t.closed.Store(true)
		close(t.stop)
		t.cancel()
		t.wg.Wait()
		if !t.callbacks.close() {
			t.opts.Logger.Warn("redisleak: Close: Options.OnLeak is still running; not waiting for it (its goroutine ends when it returns)")
		}
		disp.detach(t)
		if t.metrics != nil {
			t.metrics.close()
		}
		t.mu.Lock()
		t.records = map[*connRecord]struct{}{}
		t.legacy = map[redis.ConnInfo]*connRecord{}
		t.mu.Unlock()
	})
	return nil
}

// mode returns the observer mode: ModeObserver or ModeHooks (Stats.ObserverMode).
func (t *Tracker) mode() Mode {
	if t.hooksMode.Load() {
		return ModeHooks
	}
	return ModeObserver
}

// checkMode notices a replaced observer: go-redis counted checkouts of this
// client's pools since the last scan but the dispatcher saw none at all.
func (t *Tracker) checkMode() {
	t.scanMu.Lock()
	defer t.scanMu.Unlock()
	g := disp.gen.Load()
	saw := g != t.lastGen
	t.lastGen = g
	disp.unsee()
	ops := t.poolOps()
	dOps := ops - t.lastPoolOps
	t.lastPoolOps = ops
	cur := t.mode()
	switch {
	case dOps > 0 && !saw && cur == ModeObserver:
		t.setHooksMode(true)
		t.opts.Logger.Warn("redisleak: go-redis's connection observer no longer reaches the tracker (redis.SetOTelRecorder was called by something else); falling back to hooks: only commands in flight are checked, Conn/Watch/PubSub holds are not. Chain your recorder through Options.ChainRecorder to avoid this.",
			slog.Uint64("poolCheckouts", dOps))
	case saw && cur == ModeHooks:
		t.setHooksMode(false)
		t.opts.Logger.Info("redisleak: connection observer reaches the tracker again")
	}
}

// setHooksMode enters or leaves hooks mode, counting it in hookSlow (its
// share added before the mode starts and taken back after it ends).
func (t *Tracker) setHooksMode(on bool) {
	if on {
		t.hookSlow.Add(1)
		if t.hooksMode.Swap(true) {
			t.hookSlow.Add(-1) // was on already
		}
	} else if t.hooksMode.Swap(false) {
		t.hookSlow.Add(-1)
	}
}

// poolOps sums go-redis's own counters of checkouts from the idle list over
// the client's pools. (Misses also count failed dials, which never reach the
// observer: a server that cannot be reached must not look like a replaced
// observer.)
func (t *Tracker) poolOps() uint64 { return uint64(t.client.PoolStats().Hits) }
