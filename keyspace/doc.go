// Package keyspace delivers Redis keyspace notifications to Go handlers as
// typed events, on a single server, a Redis Cluster or a Ring, without
// clobbering the server's configuration.
//
//	m, err := keyspace.NewManager(rdb, keyspace.Options{
//		Flags: "Egx", // keyevent channels; generic and expired events
//		OnGap: resync, // called after a reconnect: events in between are lost
//	})
//	m.Handle("user:*", func(ev keyspace.Event) { ... })   // every event of user:* keys
//	m.HandleEvents("session:*", onExpired, keyspace.EventExpired)
//	err = m.Start(ctx)
//	defer m.Close(ctx)
//
// # Configuration
//
// Redis publishes notifications only for the classes named in its
// notify-keyspace-events setting. Options.Flags names the classes the
// handlers need (letters K E g $ l s h z t d x e m n, A for g$lshztxed, and
// o c on Redis 8.2+, checked against each server's version). Options.Config
// says what the manager does with the setting: ConfigMerge (default) adds
// the missing letters to what the server has and never removes one;
// ConfigVerify and ConfigWarn only read it, for managed Redis where CONFIG
// is blocked; ConfigSkip leaves it alone. Merge needs no CONFIG SET where
// the flags are already there, and where CONFIG cannot even be read it says
// so once (Options.OnError) and goes on. The setting is re-checked after
// every reconnect and every Options.CheckInterval, so one lost in a restart
// or failover is put back. Options.RestoreOnClose puts back the old value
// on Close, unless someone changed it since, keeping what other running
// managers need (anywhere: each manager's config connection carries a lease
// in its client name, "keyspace|<flags>|<original>", which ends with the
// connection); the last one to leave restores.
//
// # Channels
//
// The manager subscribes only to what the handlers need: the keyspace
// channel of each key pattern (__keyspace@<db>__:<pattern>), or, for a
// handler restricted to some events when E is on, the keyevent channels of
// those events (__keyevent@<db>__:<event>). Event names Redis documents have
// constants (EventSet, EventExpired, ...); other names are passed on raw.
//
// # Delivery
//
// Redis pub/sub is at-most-once: what is published while the subscriber is
// disconnected is lost, and Redis does not say what. The manager reconnects
// on its own and calls Options.OnGap once the subscription is back (also when
// a cluster primary joins, or when the flags were found removed); a handler
// that must not miss changes should re-read its keys there.
// Options.OnGapDetail receives the same occasions as a Gap: the server
// (in a cluster, the primary whose keys to re-read), the reason and the
// times.
//
// Each of Options.Workers handler goroutines has a bounded queue
// (Options.QueueSize); events of one key always go to the same queue, so
// handlers see them in order. While a queue is empty and idle, the
// subscriber's goroutine runs the handlers itself, which saves a hand-off
// per event; a handler call that takes longer than about 10–20 ms hands the
// reading to a new goroutine, and the events read meanwhile are queued and
// handled in order after it (Stats.Handoffs). The handler goroutines take
// the waiting events in batches and, during a stream of events, look for
// more every 100 µs rather than being woken for each. When the queue is
// full, Options.Overflow decides: block reading (default), drop the newest
// or drop the oldest, counted in Stats. A panicking handler is recovered
// and reported to Options.OnError as a *PanicError. Options.Inline runs
// handlers on the subscriber goroutine always: no queue, and a slow handler
// holds up the reading.
//
// # Cluster
//
// Notifications are node-local in Redis Cluster, so the manager subscribes
// to every primary with its own connection (go-redis's
// ClusterClient.PSubscribe would pick a single node), merges the setting on
// each, and re-reads the topology every Options.CheckInterval: a new primary
// gets a subscriber (and an OnGap), a former one loses it.
//
// # Connections
//
// Per server the manager holds one subscriber connection and one connection
// for CONFIG, for its whole life. Both are acquired with
// redisleak.WithLongLived and redisleak.WithOwner(ctx, "keyspace"), so a
// redisleak tracker counts them as long-lived instead of reporting leaks.
// Event.Context, the context for handlers, has no long-lived mark: whatever
// a handler holds is checked as usual.
//
// # Testing
//
// miniredis has neither keyspace notifications nor CONFIG: use ConfigSkip
// and publish synthetic notifications, e.g.
// mr.Publish("__keyevent@0__:expired", "session:1"). Note that miniredis
// delivers a message to only one matching pattern per connection, where
// Redis delivers one per pattern.
package keyspace
