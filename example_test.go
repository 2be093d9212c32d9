package redisleak_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
)

// A Client.Conn that is never closed is reported with the line that took it;
// a connection held on purpose is marked long-lived and never reported.
func Example() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	tr, err := redisleak.Instrument(rdb, redisleak.Options{
		MaxHold:      50 * time.Millisecond,
		ScanInterval: time.Hour, // this example scans by hand
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		panic(err)
	}
	defer tr.Close()

	ctx := context.Background()
	worker := rdb.Conn() // held for the service's life, on purpose
	defer worker.Close()
	worker.Ping(redisleak.WithOwner(redisleak.WithLongLived(ctx), "worker"))

	leaked := rdb.Conn() // forgotten: never closed
	leaked.Ping(redisleak.WithOwner(ctx, "report"))

	time.Sleep(100 * time.Millisecond)
	for _, l := range tr.Scan() {
		fmt.Println(l.Kind, l.Owner, l.Site != "")
	}
	s := tr.Stats()
	fmt.Println("in use:", s.InUse, "long-lived:", s.LongLived, "leaked:", s.Leaked)
	leaked.Close()
	// Output:
	// conn report true
	// in use: 2 long-lived: 1 leaked: 1
}
