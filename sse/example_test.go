package sse_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/redisleak/redisleak/sse"
)

// Example serves a stream and publishes an event to it. miniredis stands in
// for Redis here; use a real server in production.
func Example() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	m, err := sse.NewManager(rdb, sse.Options{})
	if err != nil {
		panic(err)
	}
	srv := httptest.NewServer(m)
	defer srv.Close()
	defer m.Close(context.Background())

	resp, err := http.Get(srv.URL + "?topic=news")
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	body := bufio.NewReader(resp.Body)
	// The opening block: a retry hint and a comment.
	for line, _ := body.ReadString('\n'); line != "\n"; line, _ = body.ReadString('\n') {
	}

	id, err := m.Publish(context.Background(), "news", sse.Event{Event: "headline", Data: "Redis fans out\nacross instances"})
	if err != nil {
		panic(err)
	}
	for {
		line, _ := body.ReadString('\n')
		if line == "\n" {
			break
		}
		fmt.Print(strings.Replace(line, id, "<id>", 1))
	}
	// Output:
	// id: <id>
	// event: headline
	// data: Redis fans out
	// data: across instances
}

// ExampleManager_ServeHTTP shows the wiring of an HTTP server: the stream
// endpoint, a publish endpoint, and Close on shutdown.
func ExampleManager_ServeHTTP() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	m, err := sse.NewManager(rdb, sse.Options{
		Authorize: func(r *http.Request, topics []string) ([]string, error) {
			if r.URL.Query().Get("token") != "secret" {
				return nil, &sse.HTTPError{Status: http.StatusUnauthorized}
			}
			return topics, nil
		},
	})
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /events", m) // EventSource("/events?topic=a&token=...")
	mux.HandleFunc("POST /publish", func(w http.ResponseWriter, r *http.Request) {
		id, err := m.Publish(r.Context(), r.FormValue("topic"), sse.Event{Data: r.FormValue("data")})
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintln(w, id)
	})
	srv := &http.Server{Handler: mux}
	srv.RegisterOnShutdown(func() { _ = m.Close(context.Background()) })

	ts := httptest.NewServer(mux)
	defer ts.Close()
	resp, err := http.Get(ts.URL + "/events?topic=a&token=wrong")
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode)
	_ = m.Close(context.Background())
	// Output:
	// 401
}
