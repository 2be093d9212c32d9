package redisleak

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"time"
	"unsafe"
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

// blockingTimeout reports whether the command at the start of b is a
// blocking command and, if so, its timeout (blockForever for 0).
func blockingTimeout(b []byte) (time.Duration, bool) {
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

// Recognition on the wire. go-redis writes a command, or a whole pipeline,
// through a buffered writer: one net.Conn.Write per buffer-full, so a
// command with a large argument spans several writes and one write may
// carry many commands. trackedConn.Write (the common case: one plain command
// that arrives whole) and noteWrites therefore scan requests as a stream; the
// state that survives between writes is a reqScanner, allocated the first
// time a connection needs one (a command split across writes, or a command
// that matters: blocking, MULTI, EXEC, DISCARD). Plain commands that arrive
// whole are skipped by arithmetic without it.
//
// A batch is what go-redis writes before it reads the replies: one command
// or one pipeline. The hold is blocking from the moment a blocking command
// of the batch is written until the reply of the batch's last blocking
// command can have arrived: replies are counted as they are read (only
// while a blocking command is pending), so the PING before a BLPOP in a
// pipeline does not end the exemption. With several blocking commands in a
// batch (Redis runs them one after another) the deadline is the sum of
// their timeouts plus one BlockingGrace; with one of timeout 0 it is
// forever. Inside MULTI … EXEC commands do not block (Redis queues them and
// runs a blocking command as its non-blocking variant), so they are not
// recognised.
//
// Limits: the scanner cannot see reads while nothing blocks, so it takes a
// write that starts at a command boundary for the start of a new batch,
// unless the previous write filled a write buffer (see fullBuffer) or a
// blocking command is pending and no reply was read since. With a write
// buffer whose size is not a power of two, a pipeline piece that ends
// exactly at a command boundary looks like the end of its batch; the
// replies to its commands are then not waited for, so a later blocking
// command's exemption can end early (as it did for every pipeline before
// streaming recognition).

// oneCommand notes a new batch of one plain command, written by Write's
// short cut, which runs only with no blocking command pending and at a
// command boundary that continues nothing (blockDeadline 0, st wsCmd,
// cont unset). The rest of the scanner's state is left as it is: nothing
// reads it until a write starts a new batch through noteWrites, which
// resets it, as batch is not 0 (feed, noteRead and the replies they count
// run only within a batch that noteWrites began).
func (s *reqScanner) oneCommand() { s.batch = 1 }

// noteWrites is the general case of Write's recognition (trackedTCPConn's
// common case is in its Write; trackedConn, for the rarer connections that
// are not TCP, always calls noteWrites).
func (r *connRecord) noteWrites(b []byte) {
	s := r.req
	if s != nil && s.st != wsCmd {
		if s.st == wsBad {
			s.st = wsCmd // resynchronise on the next write
		} else {
			s.feed(r, b) // the rest of a command
			s.cont = s.st == wsCmd && fullBuffer(len(b))
			return
		}
	}
	if s != nil && s.cont {
		// the last write ended at a command boundary, but it filled a
		// write buffer: this one continues its batch
		s.feed(r, b)
		s.cont = s.st == wsCmd && fullBuffer(len(b))
		return
	}
	if bd := r.blockDeadline.Load(); bd != 0 {
		if s != nil && !s.rseen {
			// a blocking command was written and no reply has been read
			// since: this write continues its batch
			s.feed(r, b)
			s.cont = s.st == wsCmd && fullBuffer(len(b))
			return
		}
		r.blockDeadline.Store(0) // a new batch: the last one was answered
	}
	// A new batch. Skip whole plain commands without the scanner.
	i := 0
	n := int32(0)
	for i < len(b) {
		k := scanQuick(b[i:])
		if k == 0 || k > len(b)-i {
			var cls uint8
			if k, cls = scanWhole(b[i:]); k < 0 || cls != clsOther {
				break
			}
		}
		i += k
		n++
	}
	if s != nil {
		if s.batch != 0 || s.blockAt != 0 || s.rseen {
			s.newBatch()
		}
		s.batch = n
	}
	if i == len(b) && !fullBuffer(len(b)) {
		return
	}
	if s == nil {
		s = &reqScanner{batch: n}
		r.req = s
	}
	s.feed(r, b[i:])
	s.cont = s.st == wsCmd && fullBuffer(len(b))
}

// fullBuffer reports whether a write of n bytes may be a buffer-full
// flush of a longer batch: go-redis's write buffer (WriteBufferSize,
// 32 KiB by default) passes the batch on in pieces of its size, and only
// those can end at a command boundary without ending the batch. A power of
// two of at least 4 KiB is taken for one; a batch's last write of exactly
// such a size makes the next batch look like its continuation (its replies
// are then awaited one too many: the exemption lasts at most until its
// deadline).
func fullBuffer(n int) bool { return n >= 4096 && n&(n-1) == 0 }

// noteRead is called by the wrapper with the data of a Read while a
// blocking command is pending: it counts replies and ends the exemption
// when the reply of the batch's last blocking command has arrived (or as
// soon as the replies do not parse: never later than the data says).
func (r *connRecord) noteRead(b []byte) {
	s := r.req
	if s == nil || s.blockAt == 0 {
		r.blockDeadline.Store(0)
		return
	}
	s.rseen = true
	if !s.replies(b) {
		s.blockAt = 0
		r.blockDeadline.Store(0)
	}
}

// Command classes, from the command name.
const (
	clsOther  uint8 = iota
	clsLastS        // BLPOP, BRPOP, BRPOPLPUSH, BLMOVE, BZPOPMIN, BZPOPMAX: last argument, seconds
	clsLastMs       // WAIT, WAITAOF: last argument, milliseconds
	clsMpop         // BLMPOP, BZMPOP: first argument, seconds
	clsXread        // XREAD, XREADGROUP: the argument after BLOCK (before STREAMS), milliseconds
	clsMulti        // MULTI
	clsEndTx        // EXEC, DISCARD
)

// classify returns the class of a command name (any case).
func classify(name []byte) uint8 {
	if len(name) < 4 || len(name) > 10 {
		return clsOther
	}
	switch name[0] | 0x20 {
	case 'b', 'x', 'w', 'm', 'e', 'd':
	default:
		return clsOther
	}
	var low [10]byte
	for i, c := range name {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		low[i] = c
	}
	switch string(low[:len(name)]) {
	case "blpop", "brpop", "brpoplpush", "blmove", "bzpopmin", "bzpopmax":
		return clsLastS
	case "wait", "waitaof":
		return clsLastMs
	case "blmpop", "bzmpop":
		return clsMpop
	case "xread", "xreadgroup":
		return clsXread
	case "multi":
		return clsMulti
	case "exec", "discard":
		return clsEndTx
	}
	return clsOther
}

// readNum reads the decimal number at b[i:] up to "\r\n" and returns it
// and the index after the "\n"; -1 when incomplete or malformed.
func readNum(b []byte, i int) (int, int) {
	n := 0
	for j := i; j < len(b); j++ {
		c := b[j]
		if c == '\r' {
			if j == i || j+1 >= len(b) || b[j+1] != '\n' {
				return 0, -1
			}
			return n, j + 2
		}
		if c < '0' || c > '9' || j-i >= 10 {
			return 0, -1
		}
		n = n*10 + int(c-'0')
	}
	return 0, -1
}

// scanQuick returns the length of the command at the start of p when it
// is plain and simple: 1 to 9 arguments, a name of at most 9 bytes that
// cannot be one recognition cares about, other arguments of at most 99
// bytes. Otherwise it returns 0 (scanWhole decides). It calls nothing and
// checks only what memory safety needs: a result other than len(p) means
// "not one plain command", and go-redis never writes malformed requests.
func scanQuick(p []byte) int {
	if len(p) < 10 {
		return 0
	}
	// "*N\r\n$L\r\n" in one load: N arguments, a name of L bytes
	w := binary.LittleEndian.Uint64(p)
	if w&quickHeaderMask != quickHeader {
		return 0
	}
	n := uint(byte(w>>8) - '1')  // arguments after the name
	l := uint(byte(w>>40) - '0') // the name's length
	if n >= 9 || l >= 10 {
		return 0
	}
	if c := uint(p[8]|0x20) - 'a'; l >= 4 && c < 32 && quickNames>>c&1 != 0 {
		return 0
	}
	// Each further argument: "$", one or two digits, "\r\n", the bytes,
	// "\r\n". Its header is read without bounds checks: i+5 <= len(p) was
	// checked.
	base := unsafe.Pointer(unsafe.SliceData(p))
	i := 8 + l + 2
	for ; n > 0; n-- {
		if i+5 > uint(len(p)) {
			return 0
		}
		d1, d2 := *(*byte)(unsafe.Add(base, i+1)), *(*byte)(unsafe.Add(base, i+2))
		if d2 == '\r' {
			i += 4 + uint(d1-'0') + 2
		} else if *(*byte)(unsafe.Add(base, i+3)) == '\r' {
			i += 5 + uint(d1-'0')*10 + uint(d2-'0') + 2
		} else {
			return 0 // 100 bytes or more
		}
	}
	return int(i)
}

// quickHeader is "*N\r\n$L\r\n" with the digits N and L masked out by
// quickHeaderMask, read as one little-endian word.
const (
	quickHeader     = '*' | '\r'<<16 | '\n'<<24 | '$'<<32 | '\r'<<48 | '\n'<<56
	quickHeaderMask = 0xffff00ffffff00ff
)

// quickNames has a bit for each first letter ('a' is bit 0) of the
// command names recognition cares about (blocking commands, MULTI, EXEC,
// DISCARD): scanQuick leaves commands of four bytes or more that begin
// with one of them to scanWhole.
const quickNames = 1<<('b'-'a') | 1<<('x'-'a') | 1<<('w'-'a') | 1<<('m'-'a') | 1<<('e'-'a') | 1<<('d'-'a')

// scanWhole looks at the command at the start of p. If it is complete it
// returns its length and its class; if it is incomplete or malformed, -1.
// A command whose class is not clsOther is not read past its name.
// One-digit counts and lengths (most commands) take a short cut.
func scanWhole(p []byte) (int, uint8) {
	if len(p) < 4 || p[0] != '*' {
		return -1, 0
	}
	n := int(p[1] - '0')
	q := p[4:]
	if n >= 10 || p[2] != '\r' {
		var k int
		if n, k = readNum(p, 1); k < 0 {
			return -1, 0
		}
		q = p[k:]
	}
	for a := 0; a < n; a++ {
		if len(q) < 4 || q[0] != '$' {
			return -1, 0
		}
		l := int(q[1] - '0')
		h := 4
		if l >= 10 || q[2] != '\r' {
			if l, h = readNum(q, 1); h < 0 {
				return -1, 0
			}
		}
		if l > len(q)-h-2 {
			return -1, 0
		}
		if a == 0 && l >= 4 {
			switch q[h] | 0x20 {
			case 'b', 'x', 'w', 'm', 'e', 'd':
				if cls := classify(q[h : h+l]); cls != clsOther {
					return len(p) - len(q) + h + l + 2, cls
				}
			}
		}
		q = q[h+l+2:]
	}
	if n == 0 {
		return -1, 0
	}
	return len(p) - len(q), clsOther
}

// Request parser states.
const (
	wsCmd     uint8 = iota // expecting '*' (a command boundary)
	wsCount                // the number of arguments
	wsArg                  // expecting '$'
	wsLen                  // an argument's length
	wsBody                 // an argument's bytes and its "\r\n" (num left)
	wsBad                  // malformed: ignore the rest of this write
	capBytes  = 16         // longest captured argument
	maxNumLen = 12         // digits in a length
)

// Reply parser states.
const (
	rsType uint8 = iota // expecting a type byte
	rsLine              // a simple reply up to "\n"
	rsNum               // an aggregate count or bulk length up to "\n"
	rsBody              // a bulk body and its "\r\n" (rnum left)
)

// reqScanner is the streaming request (and, while a blocking command is
// pending, reply) scanner of one connection. It remembers only what
// recognition needs: the command's class, one captured argument, XREAD's
// progress towards BLOCK, whether a MULTI is open, and the batch's counts.
// Only the goroutine using the connection touches it.
type reqScanner struct {
	st     uint8 // request parser state
	cls    uint8 // class of the current command
	xr     uint8 // XREAD: 0 before BLOCK, 1 BLOCK's value is next, 2 done
	capN   uint8 // bytes captured of the current argument
	capLen uint8 // its length, when captured (capOK)
	capOK  bool  // the current argument is being captured
	multi  bool  // a MULTI is open (until EXEC or DISCARD)
	neg    bool  // the number being read is negative (replies)
	rst    uint8 // reply parser state
	rtype  byte  // type byte of the value being read (replies)
	rpush  bool  // the current top-level reply is a push message
	rseen  bool  // reply data was read since the batch began
	cont   bool  // the last write ended at a command boundary but may not end its batch

	nargs   int   // arguments of the current command
	idx     int   // index of the current argument (0: the name)
	num     int64 // number being read; then body bytes left
	cur     int64 // the current command's timeout: 0 none, -1 forever, else ns
	batch   int32 // commands begun in the current batch
	blockAt int32 // 1-based index in the batch of its last blocking command; 0 none
	nreply  int32 // replies read in the current batch
	total   int64 // summed timeouts of the batch's blocking commands: -1 forever
	first   int64 // nanotime when the batch's first blocking command was written
	rpend   int64 // values still needed to complete the current top-level reply
	rnum    int64 // reply number being read; then body bytes left

	cap [capBytes]byte
}

func (s *reqScanner) newBatch() {
	s.batch, s.blockAt, s.nreply, s.total, s.first = 0, 0, 0, 0, 0
	s.rseen, s.rst, s.rpend, s.rpush = false, rsType, 0, false
}

// feed scans b, which continues the request stream.
func (s *reqScanner) feed(r *connRecord, b []byte) {
	for i := 0; i < len(b); {
		switch s.st {
		case wsCmd:
			if b[i] != '*' {
				s.st = wsBad
				return
			}
			s.st, s.num, s.nargs, s.idx, s.cls, s.cur, s.xr = wsCount, 0, 0, 0, clsOther, 0, 0
			s.batch++
			i++
		case wsCount, wsLen:
			c := b[i]
			i++
			switch {
			case c >= '0' && c <= '9':
				s.num = s.num*10 + int64(c-'0')
				if s.num > 1<<40 {
					s.st = wsBad
					return
				}
			case c == '\r':
			case c == '\n':
				if s.st == wsCount {
					s.nargs, s.num = int(s.num), 0
					s.st = wsArg
					if s.nargs == 0 {
						s.st = wsCmd
					}
					continue
				}
				s.startArg()
			default:
				s.st = wsBad
				return
			}
		case wsArg:
			if b[i] != '$' {
				s.st = wsBad
				return
			}
			s.st, s.num = wsLen, 0
			i++
		case wsBody:
			k := int64(len(b) - i)
			if k > s.num {
				k = s.num
			}
			if s.capOK && s.capN < s.capLen {
				c := copy(s.cap[s.capN:s.capLen], b[i:i+int(k)])
				s.capN += uint8(c)
			}
			i += int(k)
			s.num -= k
			if s.num == 0 {
				s.endArg(r)
			}
		default: // wsBad
			return
		}
	}
}

// startArg runs when an argument's length is known (in num).
func (s *reqScanner) startArg() {
	l := s.num
	s.capN, s.capOK = 0, false
	if l <= capBytes {
		switch {
		case s.idx == 0:
			s.capOK = true
		case s.cls == clsLastS || s.cls == clsLastMs:
			s.capOK = s.idx == s.nargs-1
		case s.cls == clsMpop:
			s.capOK = s.idx == 1
		case s.cls == clsXread:
			s.capOK = s.xr == 1 || (s.xr == 0 && (l == 5 || l == 7))
		}
		s.capLen = uint8(l)
	}
	s.num = l + 2
	s.st = wsBody
}

// endArg runs when an argument (and its "\r\n") has been read.
func (s *reqScanner) endArg(r *connRecord) {
	a := s.cap[:s.capLen]
	ok := s.capOK
	switch {
	case s.idx == 0:
		if ok {
			s.cls = classify(a)
		}
		if s.multi && s.cls < clsMulti {
			s.cls = clsOther // queued, not run: does not block
		}
	case s.cls == clsLastS && ok && s.idx == s.nargs-1, s.cls == clsMpop && ok && s.idx == 1:
		s.cur = timeoutNs(secondsArg(a))
	case s.cls == clsLastMs && ok && s.idx == s.nargs-1:
		s.cur = timeoutNs(millisArg(a))
	case s.cls == clsXread && s.xr == 1:
		if ok {
			s.cur = timeoutNs(millisArg(a))
		}
		s.xr = 2
	case s.cls == clsXread && s.xr == 0 && ok:
		if bytes.EqualFold(a, []byte("block")) {
			s.xr = 1
		} else if bytes.EqualFold(a, []byte("streams")) {
			s.xr = 2
		}
	}
	s.idx++
	s.st = wsArg
	if s.idx < s.nargs {
		return
	}
	s.st = wsCmd
	switch s.cls {
	case clsMulti:
		s.multi = true
	case clsEndTx:
		s.multi = false
	}
	if s.cur != 0 {
		s.blocking(r, s.cur)
	}
}

func timeoutNs(d time.Duration, ok bool) int64 {
	if !ok {
		return 0
	}
	return int64(d)
}

// blocking records that the command just written blocks for up to d (-1:
// forever) and sets the connection's deadline.
func (s *reqScanner) blocking(r *connRecord, d int64) {
	s.blockAt = s.batch
	s.rseen = false
	if s.first == 0 {
		s.first = nanotime()
	}
	switch {
	case s.total < 0 || d < 0:
		s.total = -1
		r.blockDeadline.Store(int64(blockForever))
	default:
		s.total += d
		r.blockDeadline.Store(s.first + s.total + int64(r.tr.opts.BlockingGrace))
	}
}

// replies scans reply data, counting complete top-level replies (push
// messages and attributes aside). It returns false when the blocking
// command's reply has arrived, or when the data does not parse.
func (s *reqScanner) replies(b []byte) bool {
	for i := 0; i < len(b); {
		switch s.rst {
		case rsType:
			t := b[i]
			i++
			s.rtype = t
			switch t {
			case '+', '-', ':', '_', '#', ',', '(':
				s.rst = rsLine
			case '$', '!', '=', '*', '~', '%', '>', '|':
				s.rst, s.rnum, s.neg = rsNum, 0, false
				if s.rpend == 0 {
					s.rpush = t == '>'
				}
			default:
				return false
			}
		case rsLine:
			j := bytes.IndexByte(b[i:], '\n')
			if j < 0 {
				return true
			}
			i += j + 1
			s.rst = rsType
			if s.valueDone() {
				return false
			}
		case rsNum:
			c := b[i]
			i++
			switch {
			case c >= '0' && c <= '9':
				s.rnum = s.rnum*10 + int64(c-'0')
				if s.rnum > 1<<40 {
					return false
				}
			case c == '-':
				s.neg = true
			case c == '\r':
			case c == '\n':
				s.rst = rsType
				if s.neg {
					if s.valueDone() { // a null
						return false
					}
					continue
				}
				switch s.rtype {
				case '$', '!', '=':
					s.rst = rsBody
					s.rnum += 2
				case '|': // attributes: pairs before the value they annotate
					if s.rpend == 0 {
						s.rpend = 1
					}
					s.rpend += 2 * s.rnum
				default:
					n := s.rnum
					if s.rtype == '%' {
						n *= 2
					}
					if n == 0 {
						if s.valueDone() {
							return false
						}
						continue
					}
					if s.rpend == 0 {
						s.rpend = n
					} else {
						s.rpend += n - 1 // this aggregate is one of its parent's values
					}
				}
			default:
				return false
			}
		case rsBody:
			k := int64(len(b) - i)
			if k > s.rnum {
				k = s.rnum
			}
			i += int(k)
			s.rnum -= k
			if s.rnum == 0 {
				s.rst = rsType
				if s.valueDone() {
					return false
				}
			}
		}
	}
	return true
}

// valueDone counts a complete value; it reports whether the reply of the
// batch's last blocking command has now been read.
func (s *reqScanner) valueDone() bool {
	if s.rpend > 0 {
		s.rpend--
		if s.rpend > 0 {
			return false
		}
	}
	if s.rpush {
		s.rpush = false
		return false
	}
	s.nreply++
	return s.nreply >= s.blockAt
}
