package redisleak

import (
	"bytes"
	"strconv"
	"time"
)

// Blocking commands hold a connection for up to their own timeout by design.
// The tracker recognises them from the bytes go-redis writes (a RESP array
// whose first element is the command name), so they are recognised on any
// path: pooled commands, Conn, Tx, whatever context was used.
//
// Timeout units: BLPOP, BRPOP, BRPOPLPUSH, BLMOVE, BLMPOP, BZPOPMIN, BZPOPMAX,
// BZMPOP take seconds (a float); XREAD/XREADGROUP BLOCK, WAIT and WAITAOF take
// milliseconds. A timeout of 0 blocks forever.

// respArgs iterates over the bulk strings of a RESP array at the start of b.
// It stops at the first malformed or truncated element.
type respArgs struct {
	b []byte
	n int // elements left
}

func newRespArgs(b []byte) (respArgs, bool) {
	if len(b) < 4 || b[0] != '*' {
		return respArgs{}, false
	}
	i := bytes.IndexByte(b, '\r')
	if i < 2 || i+1 >= len(b) || b[i+1] != '\n' {
		return respArgs{}, false
	}
	n, ok := atoiBytes(b[1:i])
	if !ok || n <= 0 {
		return respArgs{}, false
	}
	return respArgs{b: b[i+2:], n: n}, true
}

func (r *respArgs) next() ([]byte, bool) {
	if r.n == 0 || len(r.b) < 4 || r.b[0] != '$' {
		return nil, false
	}
	i := bytes.IndexByte(r.b, '\r')
	if i < 2 || i+1 >= len(r.b) {
		return nil, false
	}
	l, ok := atoiBytes(r.b[1:i])
	if !ok || l < 0 || i+2+l+2 > len(r.b) {
		return nil, false
	}
	arg := r.b[i+2 : i+2+l]
	r.b = r.b[i+2+l+2:]
	r.n--
	return arg, true
}

// last returns the last remaining element, or nil.
func (r *respArgs) last() []byte {
	var last []byte
	for {
		a, ok := r.next()
		if !ok {
			return last
		}
		last = a
	}
}

func atoiBytes(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 10 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// mayBlock is blockingTimeout's cheap pre-check: b is a RESP array whose
// first element (the command name) starts with b, x or w.
func mayBlock(b []byte) bool {
	// "*N\r\n$L\r\nNAME": with one-digit N and L (every command up to 9
	// arguments and names up to 9 bytes) the name starts at 8.
	if len(b) > 9 && b[2] == '\r' && b[6] == '\r' {
		c := b[8] | 0x20
		return c == 'b' || c == 'x' || c == 'w'
	}
	// otherwise the name starts after the second '\n'
	n := 0
	for i := 0; i < len(b) && i < 32; i++ {
		if b[i] == '\n' {
			if n++; n == 2 {
				if i+1 < len(b) {
					c := b[i+1] | 0x20
					return c == 'b' || c == 'x' || c == 'w'
				}
				return false
			}
		}
	}
	return false
}

// blockingTimeout reports whether the command at the start of b is a
// blocking command and, if so, its timeout (blockForever for 0).
func blockingTimeout(b []byte) (time.Duration, bool) {
	// Fast reject: the first name byte sits right after "*N\r\n$L\r\n".
	if len(b) < 10 || b[0] != '*' {
		return 0, false
	}
	args, ok := newRespArgs(b)
	if !ok {
		return 0, false
	}
	name, ok := args.next()
	if !ok || len(name) < 4 {
		return 0, false
	}
	switch name[0] | 0x20 {
	case 'b', 'x', 'w':
	default:
		return 0, false
	}
	lower := bytes.ToLower(name)
	switch string(lower) {
	case "blpop", "brpop", "brpoplpush", "blmove", "bzpopmin", "bzpopmax":
		return secondsArg(args.last())
	case "blmpop", "bzmpop":
		a, ok := args.next()
		if !ok {
			return 0, false
		}
		return secondsArg(a)
	case "xread", "xreadgroup":
		for {
			a, ok := args.next()
			if !ok {
				return 0, false
			}
			if bytes.EqualFold(a, []byte("streams")) {
				return 0, false // no BLOCK before STREAMS: not blocking
			}
			if bytes.EqualFold(a, []byte("block")) {
				v, ok := args.next()
				if !ok {
					return 0, false
				}
				return millisArg(v)
			}
		}
	case "wait", "waitaof":
		return millisArg(args.last())
	}
	return 0, false
}

func secondsArg(a []byte) (time.Duration, bool) {
	if a == nil {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(a), 64)
	if err != nil || f < 0 {
		return 0, false
	}
	if f == 0 {
		return blockForever, true
	}
	return time.Duration(f * float64(time.Second)), true
}

func millisArg(a []byte) (time.Duration, bool) {
	if a == nil {
		return 0, false
	}
	n, err := strconv.ParseInt(string(a), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	if n == 0 {
		return blockForever, true
	}
	return time.Duration(n) * time.Millisecond, true
}
