// Package redisleak finds Redis connections that are held too long in
// go-redis pools — and knows which long holds are on purpose.
//
// Attach a tracker to a client you already have:
//
//	tr, err := redisleak.Instrument(rdb, redisleak.Options{}) // 30 s threshold, scan every 10 s
//	if err != nil { ... }
//	defer tr.Close()
//	http.Handle("/health/redis-pool", tr.Handler())
//
// If the service installs a go-redis recorder of its own (redis.SetOTelRecorder,
// e.g. go-redis's native OpenTelemetry metrics), pass it as
// Options.ChainRecorder: go-redis has one process-wide recorder slot.
//
// Mark the holds that are long on purpose where you start them:
//
//	conn := rdb.Conn()
//	conn.BZPopMin(redisleak.WithOwner(redisleak.WithLongLived(ctx), "queue:emails"), 0, "marker")
//
// # What it sees
//
// The tracker wraps each dialed net.Conn (DialHook) and receives go-redis's
// connection-state events (the process-wide observer installed with
// redis.SetOTelRecorder). A hold belongs to the goroutine that checked the
// connection out (goroutines sharing a context are told apart). A hold starts when a connection leaves the pool —
// for a command, a pipeline, a Watch callback, a Client.Conn from its first
// command until Close, a PubSub for its life — and ends when it returns or
// closes. Every hold is timed exactly; nothing is unwound on the hot path.
//
// # Long-lived holds
//
// A hold is exempt when the context of the call that acquired it carries
// WithLongLived, or when it is long-lived by nature: PubSub connections
// (go-redis re-dials them with a background context, so a mark alone would
// be lost) and blocking commands (BLPOP, BZPOPMIN, XREAD BLOCK, WAIT, ...)
// until their own timeout plus Options.BlockingGrace (timeout 0: forever).
// With Options.AutoLongLived a hold is also exempt by behaviour while its
// connection keeps running commands, and a leak once it has been idle for
// its threshold. WithMaxHold sets a per-call threshold for holds that are
// long but bounded. Leak.LongLivedBy says which rule exempted a hold.
//
// # Reports
//
// Each leak is reported once: a slog WARN (leakedCount, maxHoldTimeMs and the
// leak's fields), Options.OnLeak, the redisleak.leaks counter; an INFO
// follows when a reported hold ends. A Leak names its acquisition site, the
// first frame outside go-redis and this package: captured when a hold
// outlives its command (Conn, Watch), at dial for PubSub, and for a command
// still running from the goroutine profile (taken concurrently: the world is
// not stopped for a dump). A pool
// timeout error names the holders (*PoolTimeoutError; errors.Is with
// redis.ErrPoolTimeout still holds).
//
// # Metrics
//
// A tracker reports these OpenTelemetry instruments to
// Options.MeterProvider (nil: the global provider), meter
// github.com/redisleak/redisleak:
//
//	name                                   instrument  unit          what
//	redisleak.connections.in_use           gauge       {connection}  held out of the pool, long-lived ones included (Stats.InUse)
//	redisleak.connections.idle             gauge       {connection}  idle in the pool (Stats.Idle)
//	redisleak.connections.long_lived       gauge       {connection}  held and long-lived (Stats.LongLived)
//	redisleak.connections.leaked           gauge       {connection}  held over their threshold, not long-lived (Stats.Leaked)
//	redisleak.pool.connections.in_use      gauge       {connection}  in_use per go-redis pool (PoolStats.InUse)
//	redisleak.pool.connections.idle        gauge       {connection}  idle per go-redis pool (PoolStats.Idle)
//	redisleak.pool.connections.long_lived  gauge       {connection}  long_lived per go-redis pool (PoolStats.LongLived)
//	redisleak.pool.connections.leaked      gauge       {connection}  leaked per go-redis pool (PoolStats.Leaked)
//	redisleak.connection.hold.duration     histogram   s             each ended hold, by attribute kind
//	redisleak.leaks                        counter     {leak}        leaks reported (each once), by attribute kind
//
// Their attributes:
//
//	attribute                       on                             value
//	redisleak.client                every data point               the tracker's Name (Options.Name, or derived from the client)
//	redis.client.kind               every data point               Stats.ClientKind: client, failover, cluster or ring
//	kind                            hold.duration, leaks           the hold's Kind: command, pipeline, tx, conn, pubsub, blocking
//	db.client.connection.pool.name  redisleak.pool.* gauges        go-redis's pool name, as in go-redis's own OTel metrics
//	server.address                  redisleak.pool.* gauges        the pool's server address
//
// The four client gauges have one point per tracker: the client's totals
// over all its pools. The four pool gauges break the same counts down, one
// point per pool; they are not reported in ModeHooks, where the tracker
// sees no pools. Summing a pool gauge over its pools gives the client
// gauge; never sum the two families together. The hold-time histogram is
// named apart from redisotel's db.client.connections.use_time, which times
// commands, not holds. The tracker counts ended holds in its own log-linear
// histogram (Stats.HoldTime, every hold, exact maxima) and hands the holds
// that ended since the last collection to the hold-time histogram when a
// reader collects, each at the middle of its bucket (within 10% of its
// duration): nothing runs between collections, nothing is recorded without a
// reader, and nothing is lost or sent twice.
//
// # Concurrency
//
// A Tracker is safe for concurrent use. Close stops its goroutines and makes
// its hooks inert; hooks cannot be removed from a go-redis client.
package redisleak
