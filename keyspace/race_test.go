//go:build race

package keyspace

// burstRate is the SETs per second of the overload tests' bursts. Under the
// race detector go-redis's reading of a pub/sub message costs several times
// as much, and the subscriber of this process cannot read 50,000 events/s
// on a shared 2-core machine, with or without handlers.
const burstRate = 10000
