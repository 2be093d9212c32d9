// Package holdtest helps the companions' tests check the marks they put on
// contexts, through the tracker's public view of holds.
package holdtest

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
)

// HoldWith takes a connection of rdb with ctx (the first command of a
// Client.Conn) and returns tr's view of that hold: the marks on ctx decide
// its owner and whether it is long-lived by mark. tr is rdb's tracker, and
// rdb has no other holds meanwhile.
func HoldWith(ctx context.Context, rdb *redis.Client, tr *redisleak.Tracker) (redisleak.Leak, error) {
	c := rdb.Conn()
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		return redisleak.Leak{}, err
	}
	hs := tr.Holds()
	if len(hs) != 1 {
		return redisleak.Leak{}, fmt.Errorf("holds %v, want the one Conn", hs)
	}
	return hs[0], nil
}
