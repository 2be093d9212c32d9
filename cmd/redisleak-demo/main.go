// Command redisleak-demo runs a small service on one instrumented go-redis
// client and shows, live, what the redisleak tracker sees in its pool: the
// connections that are long-lived on purpose, and the one it leaks.
//
//	go run ./cmd/redisleak-demo                    # embedded Redis (miniredis), until Ctrl-C
//	go run ./cmd/redisleak-demo -duration 5s       # print the final stats after 5 s and exit
//	go run ./cmd/redisleak-demo -redis 127.0.0.1:6379
//	go run ./cmd/redisleak-demo -redis rediss://user:pass@host:6380/3
//	go run ./cmd/redisleak-demo -mark-long-lived=false   # the naive "before" picture
//	go run ./cmd/redisleak-demo -auto-long-lived         # the tracker's automatic detection on
//	go run ./cmd/redisleak-demo -mark-long-lived=false -auto-long-lived
//	                                                     # marks stripped: naive verdict vs automatic detection
//
// The service: an HTTP API that stores sessions and enqueues welcome e-mails
// on a BullMQ-compatible queue (package bullmq), workers that send them, a
// QueueEvents reader that counts what the workers did, an SSE manager
// (package sse) that streams the pool's stats to the dashboard, and — on a
// real Redis only — a keyspace manager (package keyspace) that sees sessions
// expire. A load generator calls the API; after -leak-after it calls the
// one endpoint with a bug, leakyReport, which takes a connection and never
// gives it back.
//
// -auto-long-lived turns on the tracker's automatic long-lived detection
// (Options.AutoLongLived): a hold that keeps running commands is long-lived
// by behaviour, one idle for -max-hold a leak. With -mark-long-lived=false
// as well, the demo strips the companions' WithLongLived marks before the
// tracker sees them, and shows the tracker's verdict on the unmarked holders
// beside the naive detector's.
//
// Pages: / (the dashboard: a chart fed by the project's own SSE, the current
// leaks with their sites, the holders long-lived by behaviour, the
// holders), /health/redis-pool (the tracker's JSON), /metrics (Prometheus,
// through OpenTelemetry's exporter).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisEnv is the demo's own variable for -redis. The demo does not read
// REDIS_ADDR, which the tests use: a shell set up for the tests would
// otherwise point the demo at that server without a word.
const redisEnv = "REDISLEAK_DEMO_REDIS"

// config is what the flags say, plus hooks the tests set.
type config struct {
	Redis         string // -redis as given: "", host:port or a URL
	Listen        string
	Duration      time.Duration
	MaxHold       time.Duration
	ScanInterval  time.Duration
	Leak          bool
	LeakAfter     time.Duration
	MarkLongLived bool
	AutoLongLived bool
	Concurrency   int
	Rate          float64
	StatusEvery   time.Duration

	// redisOpts are the options -redis names; nil: the embedded miniredis.
	redisOpts *redis.Options

	// ready, when set (by tests), is called once the server listens.
	ready func(url string)
}

// parseConfig parses the command line; getenv supplies $REDISLEAK_DEMO_REDIS.
func parseConfig(args []string, getenv func(string) string, errOut io.Writer) (config, error) {
	c := config{}
	fs := flag.NewFlagSet("redisleak-demo", flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.StringVar(&c.Redis, "redis", getenv(redisEnv), "a real Redis: host:port, or a URL as redis.ParseURL reads it (redis://user:pass@host:6379/3, rediss:// for TLS); empty: an embedded miniredis (default $"+redisEnv+")")
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:8080", "HTTP listen address (:0 picks a free port)")
	fs.DurationVar(&c.Duration, "duration", 0, "run this long, print the final stats and exit (0: until interrupted)")
	fs.DurationVar(&c.MaxHold, "max-hold", 2*time.Second, "tracker threshold: a hold longer than this is a leak unless long-lived")
	fs.DurationVar(&c.ScanInterval, "scan", 500*time.Millisecond, "tracker scan interval")
	fs.BoolVar(&c.Leak, "leak", true, "call the buggy endpoint that leaks one connection")
	fs.DurationVar(&c.LeakAfter, "leak-after", 1500*time.Millisecond, "when the load generator calls the buggy endpoint")
	fs.BoolVar(&c.MarkLongLived, "mark-long-lived", true, "show the tracker's verdict; false: a naive detector's (every hold longer than -max-hold is a leak, long-lived or not)")
	fs.BoolVar(&c.AutoLongLived, "auto-long-lived", false, "the tracker's Options.AutoLongLived: a hold whose connection keeps running commands is long-lived by behaviour, one idle for -max-hold is a leak; with -mark-long-lived=false the companions' WithLongLived marks are also stripped before the tracker sees them, so it classifies them by nature or behaviour, beside the naive detector's verdict")
	fs.IntVar(&c.Concurrency, "concurrency", 4, "jobs a worker runs at once")
	fs.Float64Var(&c.Rate, "rate", 20, "signups per second sent by the load generator (0: none)")
	fs.DurationVar(&c.StatusEvery, "status", 2*time.Second, "interval of the console status line (0: none)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: redisleak-demo [flags]\n\nRuns a small service on one go-redis client instrumented with redisleak\nand serves a live dashboard of its connection pool.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	switch {
	case c.Duration < 0:
		return c, errors.New("-duration must not be negative")
	case c.MaxHold <= 0:
		return c, errors.New("-max-hold must be positive")
	case c.ScanInterval <= 0:
		return c, errors.New("-scan must be positive")
	case c.LeakAfter < 0:
		return c, errors.New("-leak-after must not be negative")
	case c.Concurrency < 1:
		return c, errors.New("-concurrency must be at least 1")
	case c.Rate < 0:
		return c, errors.New("-rate must not be negative")
	case c.StatusEvery < 0:
		return c, errors.New("-status must not be negative")
	}
	if c.Redis != "" {
		opts, err := parseRedis(c.Redis)
		if err != nil {
			return c, err
		}
		c.redisOpts = opts
	}
	return c, nil
}

// parseRedis reads -redis: a URL (redis://, rediss://, unix://, as
// redis.ParseURL reads it) or host:port.
func parseRedis(s string) (*redis.Options, error) {
	if strings.Contains(s, "://") {
		// The URL may hold a password: errors name it redacted, and
		// url.Parse's own errors (which quote it whole) are unwrapped.
		u, err := url.Parse(s)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return nil, fmt.Errorf("-redis: not a valid URL: %v", err)
		}
		opts, err := redis.ParseURL(s)
		if err != nil {
			return nil, fmt.Errorf("-redis %q: %w", u.Redacted(), err)
		}
		return opts, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err == nil {
		if n, perr := strconv.Atoi(port); perr != nil || n < 1 || n > 65535 {
			err = fmt.Errorf("bad port %q", port)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("-redis %q: want host:port or a URL (redis://[user:pass@]host:port[/db], rediss:// for TLS): %v", s, err)
	}
	if host == "" {
		host = "localhost"
	}
	return &redis.Options{Addr: net.JoinHostPort(host, port)}, nil
}

// redisLabel names the server opts point at, without the password:
// "host:port", or "rediss://user@host:port/3" for a URL with a user, TLS
// or a database.
func redisLabel(opts *redis.Options) string {
	if opts.Network == "unix" {
		if opts.DB != 0 {
			return "unix:" + opts.Addr + "?db=" + strconv.Itoa(opts.DB)
		}
		return "unix:" + opts.Addr
	}
	if opts.TLSConfig == nil && opts.Username == "" && opts.DB == 0 {
		return opts.Addr
	}
	scheme := "redis://"
	if opts.TLSConfig != nil {
		scheme = "rediss://"
	}
	user := ""
	if opts.Username != "" {
		user = url.User(opts.Username).String() + "@"
	}
	db := ""
	if opts.DB != 0 {
		db = "/" + strconv.Itoa(opts.DB)
	}
	return scheme + user + opts.Addr + db
}

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "redisleak-demo:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "redisleak-demo:", err)
		os.Exit(1)
	}
}

// duration formats d for people: "4.0s" up to 90 s, then "2m 5s", and
// "1h 3m" from an hour on (as the dashboard does).
func duration(d time.Duration) string {
	if d <= 90*time.Second {
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	}
	s := int64(d / time.Second)
	if s < 3600 {
		return fmt.Sprintf("%dm %ds", s/60, s%60)
	}
	return fmt.Sprintf("%dh %dm", s/3600, s%3600/60)
}
