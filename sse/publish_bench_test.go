package sse

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/internal/redistest"
)

// publishScriptBefore is publishScript as it was before every history got an
// origin marker (kept here only as the benchmark's baseline).
var publishScriptBefore = redis.NewScript(`
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 't', ARGV[2], 'e', ARGV[3], 'd', ARGV[4])
redis.call(ARGV[5], KEYS[2], id .. '\n' .. ARGV[2] .. '\n' .. ARGV[3] .. '\n' .. ARGV[4])
return id
`)

// BenchmarkPublishScript: the cost of the origin check (one EXISTS) in the
// publish script against the script without it, alternating on one server:
//
//	go test -run '^$' -bench PublishScript -count 10 ./sse/ | benchstat -col /script -
func BenchmarkPublishScript(b *testing.B) {
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Addr(b), MaintNotificationsConfig: redistest.NoMaintNotifications()})
	defer rdb.Close()
	ctx := context.Background()
	ns := fmt.Sprintf("ssebench-%d", nsCounter.Add(1))
	keys := []string{"{" + ns + "}:history", "{" + ns + "}:live", "{" + ns + "}:origin"}
	defer rdb.Del(ctx, keys[0], keys[2])
	data := strings.Repeat("x", 1024)
	for _, s := range []struct {
		name   string
		script *redis.Script
		keys   []string
	}{{"before", publishScriptBefore, keys[:2]}, {"after", publishScript, keys}} {
		b.Run("script="+s.name, func(b *testing.B) {
			for b.Loop() {
				if err := s.script.Run(ctx, rdb, s.keys, 10_000, "t", "", data, "PUBLISH").Err(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
