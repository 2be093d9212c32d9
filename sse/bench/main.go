// Command bench compares the delivery rate and publish-to-receive latency of
// github.com/redisleak/redisleak/sse (through Redis) with
// github.com/tmaxmax/go-sse's in-process fan-out (Joe), with the same
// clients, on loopback, in one run. It is a separate module so that the
// library does not depend on go-sse.
//
//	cd sse/bench && go run . [-clients 1000] [-events 1000] [-size 1024]
//
// It starts a private redis-server (or uses -redis), runs for a bounded
// time and exits.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	gosse "github.com/tmaxmax/go-sse"

	"github.com/redisleak/redisleak/sse"
)

var (
	clients  = flag.Int("clients", 1000, "concurrent SSE clients")
	events   = flag.Int("events", 1000, "events of the throughput phase")
	size     = flag.Int("size", 1024, "event data size in bytes")
	rate     = flag.Int("rate", 20, "events per second of the latency phase")
	latFor   = flag.Duration("latency-for", 5*time.Second, "duration of the latency phase")
	redisArg = flag.String("redis", "", "Redis address; empty starts a private redis-server")
	only     = flag.String("only", "", "run only \"redisleak\" or \"go-sse\"")
	cpuProf  = flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
)

// system is one implementation under test.
type system struct {
	name    string
	handler http.Handler
	publish func(ctx context.Context, data string) error
	close   func()
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	addr := *redisArg
	if addr == "" {
		var stop func()
		addr, stop = startRedis()
		defer stop()
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 32})
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		log.Fatalf("redis %s: %v", addr, err)
	}
	info, _ := rdb.Info(ctx, "server").Result()
	fmt.Printf("clients=%d events=%d size=%dB latency phase: %d ev/s for %v; GOMAXPROCS=%d, %s, redis %s\n",
		*clients, *events, *size, *rate, *latFor, runtime.GOMAXPROCS(0), runtime.Version(), field(info, "redis_version"))

	var results []result
	if *only == "" || *only == "redisleak" {
		ns := fmt.Sprintf("bench-%d", os.Getpid())
		m, err := sse.NewManager(rdb, sse.Options{Namespace: ns, QueueSize: *events + 64, HistorySize: int64(*events) * 2})
		if err != nil {
			log.Fatal(err)
		}
		results = append(results, run(ctx, system{
			name:    "redisleak/sse (via Redis)",
			handler: m,
			publish: func(ctx context.Context, data string) error {
				_, err := m.Publish(ctx, "bench", sse.Event{Data: data})
				return err
			},
			close: func() {
				_ = m.Close(context.Background())
				_ = rdb.Del(context.Background(), "{"+ns+"}:history").Err()
			},
		}, "/?topic=bench"))
	}
	if *only == "" || *only == "go-sse" {
		srv := &gosse.Server{}
		var n atomic.Int64
		results = append(results, run(ctx, system{
			name:    "tmaxmax/go-sse v0.12.0 (Joe, in-process)",
			handler: srv,
			publish: func(ctx context.Context, data string) error {
				msg := &gosse.Message{ID: gosse.ID(strconv.FormatInt(n.Add(1), 10))}
				msg.AppendData(data)
				return srv.Publish(msg)
			},
			close: func() { _ = srv.Shutdown(context.Background()) },
		}, "/"))
	}
	fmt.Println()
	fmt.Println("| server | deliveries/s (burst) | p50 / p99 latency under burst | p50 / p99 latency at steady rate | lost |")
	fmt.Println("|---|---|---|---|---|")
	for _, r := range results {
		fmt.Printf("| %s | %.0f | %v / %v | %v / %v | %d |\n", r.name, r.rate,
			r.burstP50.Round(time.Microsecond*10), r.burstP99.Round(time.Microsecond*10),
			r.steadyP50.Round(time.Microsecond*10), r.steadyP99.Round(time.Microsecond*10), r.lost)
	}
}

type result struct {
	name                                     string
	rate                                     float64
	burstP50, burstP99, steadyP50, steadyP99 time.Duration
	lost                                     int64
}

// counters shared by the clients.
type phaseStats struct {
	mu        sync.Mutex
	latencies []time.Duration
	count     atomic.Int64
	done      chan struct{} // closed when count reaches want
	want      int64
}

func (p *phaseStats) add(d time.Duration) {
	p.mu.Lock()
	p.latencies = append(p.latencies, d)
	p.mu.Unlock()
	if p.count.Add(1) == p.want {
		close(p.done)
	}
}

func newPhase(want int64) *phaseStats {
	return &phaseStats{want: want, done: make(chan struct{}), latencies: make([]time.Duration, 0, want)}
}

func run(ctx context.Context, s system, path string) result {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	// go-sse logs a superfluous WriteHeader when Shutdown ends its streams.
	hs := &http.Server{Handler: s.handler, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = hs.Serve(ln) }()
	url := "http://" + ln.Addr().String() + path
	defer func() {
		s.close()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = hs.Shutdown(sctx)
		cancel()
		hs.Close()
	}()

	n := *clients
	warm := make([]atomic.Bool, n)
	var warmCount atomic.Int64
	burst := newPhase(int64(n * *events))
	steadyWant := int64(*rate) * int64(latFor.Seconds())
	steady := newPhase(int64(n) * steadyWant)
	cctx, stopClients := context.WithCancel(ctx)
	var wg sync.WaitGroup
	tr := &http.Transport{MaxIdleConnsPerHost: n + 10, MaxConnsPerHost: 0, DisableCompression: true}
	defer tr.CloseIdleConnections()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(cctx, http.MethodGet, url, nil)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				if cctx.Err() == nil {
					log.Printf("client %d: %v", i, err)
				}
				return
			}
			defer resp.Body.Close()
			br := bufio.NewReaderSize(resp.Body, 64<<10)
			for {
				line, err := br.ReadSlice('\n')
				if err != nil {
					return
				}
				rest, ok := bytes.CutPrefix(line, []byte("data: "))
				if !ok || len(rest) < 2 {
					continue
				}
				now := time.Now()
				sp := bytes.IndexByte(rest, ' ')
				ts, _ := strconv.ParseInt(string(rest[1:sp]), 10, 64)
				d := now.Sub(time.Unix(0, ts))
				switch rest[0] {
				case 'W':
					if !warm[i].Swap(true) {
						warmCount.Add(1)
					}
				case 'B':
					burst.add(d)
				case 'S':
					steady.add(d)
				}
			}
		}(i)
	}
	payload := func(phase byte) string {
		p := string(phase) + strconv.FormatInt(time.Now().UnixNano(), 10) + " "
		return p + strings.Repeat("x", max(0, *size-len(p)))
	}
	// Warm up until every client is subscribed.
	for warmCount.Load() < int64(n) {
		if ctx.Err() != nil {
			log.Fatalf("%s: only %d of %d clients connected", s.name, warmCount.Load(), n)
		}
		if err := s.publish(ctx, payload('W')); err != nil {
			log.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let warm-up events drain

	// Burst: publish as fast as the server accepts, 4 publishers.
	start := time.Now()
	var pwg sync.WaitGroup
	var next atomic.Int64
	for p := 0; p < 4; p++ {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for next.Add(1) <= int64(*events) {
				if err := s.publish(ctx, payload('B')); err != nil {
					log.Fatal(err)
				}
			}
		}()
	}
	pwg.Wait()
	var lost int64
	select {
	case <-burst.done:
	case <-time.After(2 * time.Minute):
		lost += burst.want - burst.count.Load()
		log.Printf("%s: burst incomplete: %d of %d deliveries", s.name, burst.count.Load(), burst.want)
	}
	elapsed := time.Since(start)

	// Steady rate.
	tick := time.NewTicker(time.Second / time.Duration(*rate))
	for i := int64(0); i < steadyWant; i++ {
		<-tick.C
		if err := s.publish(ctx, payload('S')); err != nil {
			log.Fatal(err)
		}
	}
	tick.Stop()
	select {
	case <-steady.done:
	case <-time.After(30 * time.Second):
		lost += steady.want - steady.count.Load()
		log.Printf("%s: steady incomplete: %d of %d deliveries", s.name, steady.count.Load(), steady.want)
	}
	stopClients()
	wg.Wait()

	r := result{name: s.name, rate: float64(burst.count.Load()) / elapsed.Seconds(), lost: lost}
	r.burstP50, r.burstP99 = percentiles(burst)
	r.steadyP50, r.steadyP99 = percentiles(steady)
	fmt.Printf("%s: burst %d deliveries in %v\n", s.name, burst.count.Load(), elapsed.Round(time.Millisecond))
	return r
}

func percentiles(p *phaseStats) (p50, p99 time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.latencies) == 0 {
		return 0, 0
	}
	slices.Sort(p.latencies)
	return p.latencies[len(p.latencies)/2], p.latencies[len(p.latencies)*99/100]
}

func field(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return "?"
}

// startRedis starts a private redis-server on a free loopback port.
func startRedis() (string, func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir, err := os.MkdirTemp("", "ssebench")
	if err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--loglevel", "warning")
	if err := cmd.Start(); err != nil {
		log.Fatalf("redis-server: %v (pass -redis host:port)", err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return addr, func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); _ = os.RemoveAll(dir) }
}
