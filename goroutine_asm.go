//go:build amd64 || arm64

package redisleak

// curG returns the address of the running goroutine's runtime descriptor: a
// value that stays the same for one goroutine while it runs and differs
// between goroutines that run at the same time (a descriptor is reused only
// after its goroutine has ended). It is read from the goroutine register in a
// few instructions (goroutine_amd64.s, goroutine_arm64.s).
//
// The tracker uses it to tell which goroutine holds a connection: go-redis
// reports a command after returning its connection to the pool, so when
// goroutines share a context another goroutine may already hold the same
// connection by then; the context cannot tell them apart, the goroutine can.
func curG() uintptr
