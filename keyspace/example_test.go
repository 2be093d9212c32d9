package keyspace_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/keyspace"
)

// Handle every event on user keys. miniredis publishes no notifications of
// its own and has no CONFIG: the example skips the config step and
// publishes a notification by hand, as Redis would for SET user:1.
func ExampleManager_Handle() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	m, err := keyspace.NewManager(rdb, keyspace.Options{Config: keyspace.ConfigSkip})
	if err != nil {
		panic(err)
	}
	got := make(chan keyspace.Event, 1)
	m.Handle("user:*", func(ev keyspace.Event) { got <- ev })
	ctx := context.Background()
	if err := m.Start(ctx); err != nil {
		panic(err)
	}
	defer m.Close(ctx)

	mr.Publish("__keyspace@0__:user:1", "set")
	ev := <-got
	fmt.Println(ev.Event, ev.Key, ev.Event == keyspace.EventSet)
	// Output: set user:1 true
}

// React to expiring sessions only: with E in the flags, the manager listens
// on the keyevent channel of the expired event and matches keys itself.
func ExampleManager_HandleEvents() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	m, err := keyspace.NewManager(rdb, keyspace.Options{Flags: "Ex", Config: keyspace.ConfigSkip})
	if err != nil {
		panic(err)
	}
	expired := make(chan string, 2)
	err = m.HandleEvents("session:*", func(ev keyspace.Event) { expired <- ev.Key }, keyspace.EventExpired)
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	if err := m.Start(ctx); err != nil {
		panic(err)
	}
	defer m.Close(ctx)

	mr.Publish("__keyevent@0__:expired", "cart:9") // not a session
	mr.Publish("__keyevent@0__:expired", "session:42")
	fmt.Println(<-expired)
	// Output: session:42
}

// Where CONFIG is unavailable (managed Redis with CONFIG renamed or denied,
// miniredis), the setting cannot be read: the default ConfigMerge says so
// once, through OnError, and goes on (the flags may well be set in the
// provider's console).
func ExampleNewManager_configUnavailable() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	m, err := keyspace.NewManager(rdb, keyspace.Options{OnError: func(err error) {
		fmt.Println("reported:", errors.Is(err, keyspace.ErrConfigUnavailable))
	}})
	if err != nil {
		panic(err)
	}
	err = m.Start(context.Background())
	fmt.Println("started:", err == nil)
	_ = m.Close(context.Background())
	// Output:
	// reported: true
	// started: true
}

// Bad flags are an error from the constructor.
func ExampleNewManager_badFlags() {
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"}) // not contacted
	defer rdb.Close()
	_, err := keyspace.NewManager(rdb, keyspace.Options{Flags: "KEQ"})
	fmt.Println(err)
	// Output: keyspace: bad notify-keyspace-events flags: unknown flag "Q" in "KEQ" (known: KEg$lshztdxemnoc and A)
}

// OnGapDetail says which server lost events, and why: a handler that keeps
// state per server (per cluster primary) rescans only that server's keys.
// Here the server restarts under a running manager.
func ExampleOptions_onGapDetail() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	gaps := make(chan keyspace.Gap, 1)
	m, err := keyspace.NewManager(rdb, keyspace.Options{
		Config: keyspace.ConfigSkip,
		OnGap:  func() {}, // still called, without detail
		OnGapDetail: func(g keyspace.Gap) {
			gaps <- g // e.g. rescan the keys that live on g.Node
		},
	})
	if err != nil {
		panic(err)
	}
	m.Handle("user:*", func(keyspace.Event) {})
	if err := m.Start(context.Background()); err != nil {
		panic(err)
	}
	defer m.Close(context.Background())

	mr.Close() // the subscriber's connection breaks
	if err := mr.Restart(); err != nil {
		panic(err)
	}
	g := <-gaps
	fmt.Println(g.Reason, g.Node == mr.Addr(), !g.At.Before(g.Since))
	// Output: reconnect true true
}
