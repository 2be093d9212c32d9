package main

import (
	"context"
	"net"

	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak"
)

// untagHook is what -mark-long-lived=false installs in front of the
// tracker's hooks: it strips the redisleak.WithLongLived mark from every
// dial, command and pipeline of the client, so the companions' dedicated
// connections (the worker's BZPOPMIN connection, the QueueEvents XREAD
// connection, the SSE and keyspace subscribers and their command
// connections) look exactly like code that never tagged them. Owners are
// kept, so the reports still say whose connection it is. Together with
// Options.DisableRecognition it reproduces a naive leak detector.
type untagHook struct{}

var _ redis.Hook = untagHook{}

func (untagHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return next(redisleak.WithoutLongLived(ctx), network, addr)
	}
}

func (untagHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		return next(redisleak.WithoutLongLived(ctx), cmd)
	}
}

func (untagHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		return next(redisleak.WithoutLongLived(ctx), cmds)
	}
}
