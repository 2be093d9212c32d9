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

// With AutoLongLived, an unmarked Conn that keeps running commands is
// long-lived by behaviour, and a Conn forgotten after one command is a leak
// once it has been idle for MaxHold.
func ExampleOptions_autoLongLived() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	tr, err := redisleak.Instrument(rdb, redisleak.Options{
		MaxHold:       500 * time.Millisecond,
		AutoLongLived: true,
		ScanInterval:  time.Hour, // this example scans by hand
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		panic(err)
	}
	defer tr.Close()

	ctx := context.Background()
	forgotten := rdb.Conn()
	forgotten.Ping(ctx) // one command, then nothing
	defer forgotten.Close()

	busy := rdb.Conn() // a worker loop nobody marked
	defer busy.Close()
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		busy.Get(ctx, "job")
	}

	for _, l := range tr.Scan() {
		fmt.Printf("leak: %s, idle for at least MaxHold: %v\n", l.Kind, l.IdleFor >= 500*time.Millisecond)
	}
	fmt.Println("long-lived by behaviour:", tr.Stats().AutoLongLived)
	// Output:
	// leak: conn, idle for at least MaxHold: true
	// long-lived by behaviour: 1
}
