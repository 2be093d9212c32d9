//go:build !race

package keyspace

// burstRate is the SETs per second of the overload tests' bursts.
const burstRate = 50000
