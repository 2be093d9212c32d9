package sse

import (
	"errors"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

func TestOptionsDefaults(t *testing.T) {
	o, err := Options{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.Namespace != "sse" || o.Heartbeat != 15*time.Second || o.Retry != 3*time.Second ||
		o.HistorySize != 10000 || o.QueueSize != 1024 || o.WriteTimeout != 10*time.Second ||
		o.MaxTopics != 32 || o.OnFull != Disconnect {
		t.Fatalf("defaults: %+v", o)
	}
}

func TestOptionsInvalid(t *testing.T) {
	tests := map[string]Options{
		"negative heartbeat": {Heartbeat: -1},
		"negative retry":     {Retry: -1},
		"negative history":   {HistorySize: -1},
		"negative queue":     {QueueSize: -1},
		"negative write":     {WriteTimeout: -1},
		"negative topics":    {MaxTopics: -1},
		"negative clients":   {MaxClients: -1},
		"negative per addr":  {MaxClientsPerAddr: -1},
		"unknown policy":     {OnFull: 7},
		"brace in namespace": {Namespace: "a{b"},
		"LF in namespace":    {Namespace: "a\nb"},
		"empty origin":       {AllowedOrigins: []string{""}},
	}
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	for name, o := range tests {
		t.Run(name, func(t *testing.T) {
			m, err := NewManager(rdb, o)
			if !errors.Is(err, ErrInvalidOptions) || m != nil {
				t.Fatalf("NewManager = %v, %v; want ErrInvalidOptions", m, err)
			}
		})
	}
	if _, err := NewManager(nil, Options{}); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("nil client: %v", err)
	}
}
