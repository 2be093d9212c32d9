package redisleak

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"
)

// testRecord is a connRecord of a tracker that is only options.
// noteWrite passes b through the wrapper's Write, as go-redis writes it.
func (r *connRecord) noteWrite(b []byte) {
	c := trackedConn{Conn: discardConn{}, addr: trackedAddr{rec: r}}
	if n, err := c.Write(b); n != len(b) || err != nil {
		panic("discardConn")
	}
}

// discardConn is a net.Conn whose writes succeed and go nowhere.
type discardConn struct{ net.Conn }

func (discardConn) Write(b []byte) (int, error) { return len(b), nil }

func testRecord() *connRecord {
	return &connRecord{tr: &Tracker{opts: Options{BlockingGrace: DefaultBlockingGrace}}}
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

// Every batch, written whole or split at any point (go-redis's buffered
// writer cuts wherever its buffer fills), is recognised the same way.
func TestStreamRecognitionAnySplit(t *testing.T) {
	bigKey := strings.Repeat("k", 40<<10)
	ping, get := resp("ping"), resp("get", "k")
	cases := []struct {
		name    string
		batch   []byte
		timeout time.Duration // 0: not blocking
		blockAt int32
	}{
		{"get", get, 0, 0},
		{"blpop", resp("blpop", "a", "5"), 5 * time.Second, 1},
		{"blpop 40 KB key", resp("blpop", bigKey, "5"), 5 * time.Second, 1},
		{"set 40 KB value", resp("set", "k", bigKey), 0, 0},
		{"ping blpop", cat(ping, resp("blpop", "a", "5")), 5 * time.Second, 2},
		{"get x3 brpop forever", cat(get, get, get, resp("brpop", "a", "0")), blockForever, 4},
		{"blpop ping", cat(resp("blpop", "a", "2"), ping), 2 * time.Second, 1},
		{"two blocking: summed", cat(resp("blpop", "a", "2"), ping, resp("bzpopmin", "z", "1.5")), 3500 * time.Millisecond, 3},
		{"multi blpop exec", cat(resp("multi"), resp("blpop", "a", "5"), resp("exec")), 0, 0},
		{"multi exec blpop", cat(resp("multi"), get, resp("exec"), resp("blpop", "a", "5")), 5 * time.Second, 4},
		{"discard then blpop", cat(resp("multi"), resp("discard"), resp("blpop", "a", "1")), time.Second, 3},
		{"xread block", cat(ping, resp("xread", "count", "1", "block", "250", "streams", "s", "$")), 250 * time.Millisecond, 2},
		{"xread streams named block", resp("xread", "streams", "block", "0"), 0, 0},
		{"xreadgroup 40 KB stream", resp("XREADGROUP", "group", "g", "c", "BLOCK", "1000", "streams", bigKey, ">"), time.Second, 1},
		{"blmpop", resp("blmpop", "4", "2", "a", bigKey, "left"), 4 * time.Second, 1},
		{"wait", cat(get, resp("wait", "1", "100")), 100 * time.Millisecond, 2},
		{"blpop bad timeout", resp("blpop", "a", "x"), 0, 0},
		{"bitcount", resp("bitcount", bigKey), 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// split points: all of them for small batches; around every
			// header and the middle of bodies for large ones
			var splits []int
			if len(c.batch) < 400 {
				for i := 0; i <= len(c.batch); i++ {
					splits = append(splits, i)
				}
			} else {
				for i := 0; i <= len(c.batch); i++ {
					if i < 64 || len(c.batch)-i < 64 || i%4093 == 0 {
						splits = append(splits, i)
					}
				}
			}
			boundary := map[int]bool{}
			for i := 0; i < len(c.batch); {
				boundary[i] = true
				n, j := readNum(c.batch, i+1)
				for range n {
					l, k := readNum(c.batch, j+1)
					j = k + l + 2
				}
				i = j
			}
			for _, sp := range splits {
				if boundary[sp] && sp > 0 {
					// go-redis ends a piece at a command boundary only
					// when its buffer is full: see TestStreamRecognitionBufferPieces
					continue
				}
				for _, three := range []bool{false, true} {
					mid := sp + (len(c.batch)-sp)/2
					if three && boundary[mid] {
						mid++
					}
					r := testRecord()
					r.noteWrite(resp("get", "previous")) // an answered batch before
					before := nanotime()
					if three && sp > 0 && sp < len(c.batch) {
						r.noteWrite(c.batch[:sp])
						r.noteWrite(c.batch[sp:mid])
						r.noteWrite(c.batch[mid:])
					} else {
						r.noteWrite(c.batch[:sp])
						r.noteWrite(c.batch[sp:])
					}
					after := nanotime()
					bd := r.blockDeadline.Load()
					switch {
					case c.timeout == 0:
						if bd != 0 {
							t.Fatalf("split at %d: deadline %d, want not blocking", sp, bd)
						}
					case c.timeout == blockForever:
						if bd != int64(blockForever) {
							t.Fatalf("split at %d: deadline %d, want forever", sp, bd)
						}
					default:
						g := int64(DefaultBlockingGrace)
						if bd < before+int64(c.timeout)+g || bd > after+int64(c.timeout)+g {
							t.Fatalf("split at %d: deadline now+%v, want now+%v", sp, time.Duration(bd-before), c.timeout+DefaultBlockingGrace)
						}
					}
					if c.timeout != 0 && r.req.blockAt != c.blockAt {
						t.Fatalf("split at %d: blocking command at %d, want %d", sp, r.req.blockAt, c.blockAt)
					}
				}
			}
		})
	}
}

// A pipeline written in buffer-sized pieces, one of which ends exactly at a
// command boundary: still one batch.
func TestStreamRecognitionBufferPieces(t *testing.T) {
	for _, size := range []int{4096, 32 << 10} {
		// GETs whose total is exactly one buffer, then a BLPOP
		var p []byte
		n := int32(0)
		for size-len(p) >= 100 {
			p = append(p, resp("get", "k")...)
			n++
		}
		for l := 1; ; l++ {
			if c := resp("get", strings.Repeat("k", l)); len(c) == size-len(p) {
				p = append(p, c...)
				n++
				break
			}
		}
		if len(p) != size {
			t.Fatalf("built %d bytes", len(p))
		}
		p = append(p, resp("blpop", "q", "5")...)
		r := testRecord()
		r.noteWrite(p[:size])
		r.noteWrite(p[size:])
		if r.blockDeadline.Load() == 0 || r.req.blockAt != n+1 {
			t.Fatalf("buffer %d: blocking at %d, want %d", size, r.req.blockAt, n+1)
		}
		// the next batch, after the replies, starts afresh
		r.noteRead([]byte(strings.Repeat("$-1\r\n", int(n)) + "*-1\r\n"))
		r.noteWrite(resp("blpop", "q", "5"))
		if r.req.blockAt != 1 {
			t.Fatalf("next batch: blocking at %d", r.req.blockAt)
		}
	}
}

// The exemption lasts until the reply of the last blocking command of the
// batch has been read: not the first reply (PING's), and not longer.
func TestStreamRecognitionReplies(t *testing.T) {
	cases := []struct {
		name    string
		batch   []byte
		replies []string // in order; the hold stops blocking with the last
		after   string   // replies that follow the blocking one
	}{
		{"blpop", resp("blpop", "a", "5"), []string{"*2\r\n$1\r\na\r\n$1\r\nx\r\n"}, ""},
		{"blpop nil", resp("blpop", "a", "5"), []string{"*-1\r\n"}, ""},
		{"ping blpop", cat(resp("ping"), resp("blpop", "a", "5")), []string{"+PONG\r\n", "_\r\n"}, ""},
		{"get get blpop resp3", cat(resp("get", "k"), resp("get", "k2"), resp("blpop", "a", "5")),
			[]string{"$5\r\nhello\r\n", "$-1\r\n", ">3\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n$0\r\n\r\n", "|1\r\n+key\r\n%1\r\n:1\r\n:2\r\n*2\r\n$1\r\na\r\n$1\r\nx\r\n"}, ""},
		{"xread map reply", cat(resp("ping"), resp("xread", "block", "100", "streams", "s", "$")),
			[]string{"-ERR x\r\n", "%1\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"}, ""},
		{"blpop ping", cat(resp("blpop", "a", "5"), resp("ping")), []string{"*-1\r\n"}, "+PONG\r\n"},
		{"two blocking", cat(resp("blpop", "a", "1"), resp("blpop", "b", "1")), []string{"*-1\r\n", "*-1\r\n"}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			all := strings.Join(c.replies, "") + c.after
			last := len(strings.Join(c.replies, "")) // the blocking reply ends here
			// every split of the reply stream into two reads
			for sp := 0; sp <= len(all); sp++ {
				r := testRecord()
				r.noteWrite(c.batch)
				if r.blockDeadline.Load() == 0 {
					t.Fatal("not recognised")
				}
				for _, part := range []string{all[:sp], all[sp:]} {
					if part != "" && r.blockDeadline.Load() != 0 {
						r.noteRead([]byte(part))
					}
				}
				if r.blockDeadline.Load() != 0 {
					t.Fatalf("split at %d: still blocking after every reply", sp)
				}
				// and before the blocking reply is complete, still blocking
				r = testRecord()
				r.noteWrite(c.batch)
				r.noteRead([]byte(all[:sp]))
				if done := r.blockDeadline.Load() == 0; done != (sp >= last) {
					t.Fatalf("%d of %d reply bytes read: blocking=%v", sp, last, !done)
				}
			}
		})
	}
	// A new batch after the answered one starts afresh.
	r := testRecord()
	r.noteWrite(cat(resp("ping"), resp("blpop", "a", "5")))
	r.noteRead([]byte("+PONG\r\n*-1\r\n"))
	r.noteWrite(resp("blpop", "a", "1"))
	if r.blockDeadline.Load() == 0 || r.req.blockAt != 1 {
		t.Fatalf("second batch: deadline %d, at %d", r.blockDeadline.Load(), r.req.blockAt)
	}
	r.noteRead([]byte("*-1\r\n"))
	r.noteWrite(resp("get", "k"))
	if r.blockDeadline.Load() != 0 {
		t.Fatal("plain command after an answered blocking one")
	}
	// Garbage in replies ends the exemption (never longer than the data says).
	r.noteWrite(cat(resp("ping"), resp("blpop", "a", "5")))
	r.noteRead([]byte("?bogus"))
	if r.blockDeadline.Load() != 0 {
		t.Fatal("unparsable reply kept the exemption")
	}
}

// Malformed and truncated requests never panic, whatever the split.
func FuzzStreamRecognition(f *testing.F) {
	f.Add(cat(resp("ping"), resp("blpop", "a", "1")), 3, []byte("+PONG\r\n*-1\r\n"))
	f.Add(resp("xread", "block", "5", "streams", "s", "0"), 9, []byte("*-1\r\n"))
	f.Add([]byte("*2\r\n$5\r\nblpop\r\n$-1\r\n"), 5, []byte("$-2\r\n"))
	f.Fuzz(func(t *testing.T, b []byte, sp int, reply []byte) {
		r := testRecord()
		if sp < 0 || sp > len(b) {
			sp = len(b) / 2
		}
		r.noteWrite(b[:sp])
		r.noteWrite(b[sp:])
		if r.blockDeadline.Load() != 0 {
			r.noteRead(reply)
		}
		r.noteWrite(b)
	})
}

func BenchmarkNoteWriteGET(b *testing.B) {
	r := testRecord()
	cmd := resp("get", "some:key")
	b.ReportAllocs()
	for b.Loop() {
		r.noteWrite(cmd)
	}
}

// scanQuick returns 0 or the exact length of the first command, and the
// length whenever the command is plain and simple; a command recognition
// cares about is never skipped.
func TestScanQuickAgreesWithScanWhole(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	names := []string{"get", "set", "ping", "hgetall", "blpop", "BZPOPMIN", "xread", "wait", "multi", "exec", "discard", "mget", "del", "expire"}
	for range 20000 {
		args := []string{names[rng.IntN(len(names))]}
		for range rng.IntN(11) {
			b := make([]byte, []int{0, 1, 9, 10, 99, 100, rng.IntN(120)}[rng.IntN(7)])
			for i := range b {
				b[i] = byte(rng.IntN(256))
			}
			args = append(args, string(b))
		}
		cmd := resp(args...)
		p := append(append([]byte{}, cmd...), resp("get", "next")...)
		whole, cls := scanWhole(p)
		q := scanQuick(p)
		if q != 0 && (q != len(cmd) || cls != clsOther) {
			t.Fatalf("%q: scanQuick %d, command is %d bytes (class %d)", args, q, len(cmd), cls)
		}
		plain := cls == clsOther && len(args) <= 9 && len(args[0]) < 10
		for _, a := range args[1:] {
			plain = plain && len(a) < 100
		}
		if plain && (len(args[0]) < 4 || !strings.ContainsRune("bxwmed", rune(args[0][0]|0x20))) && q != whole {
			t.Fatalf("%q: scanQuick %d, scanWhole %d", args, q, whole)
		}
		for cut := range len(cmd) {
			if q := scanQuick(cmd[:cut]); q != 0 && q <= cut {
				t.Fatalf("%q cut at %d: scanQuick %d", args, cut, q)
			}
		}
	}
}

// A pipeline whose first command has an argument of 100 bytes or more,
// then a blocking command, in one write: the quick scan of the first
// command must not misread its three-digit length (it did, and the
// BLPOP went unrecognised or was found at the wrong offset).
func TestPipelineAfterLongArgumentIsRecognised(t *testing.T) {
	for _, size := range []int{99, 100, 150, 999, 1000} {
		r := testRecord()
		r.noteWrite(cat(resp("set", "k", strings.Repeat("v", size)), resp("blpop", "q", "5")))
		if r.blockDeadline.Load() == 0 {
			t.Errorf("value of %d bytes: BLPOP after it not recognised", size)
		}
	}
}

// trackedTCPConn.Write has scanQuick written out in its common case: it
// takes its short cut exactly when scanQuick finds the whole write to be one
// plain command, and it recognises every write as noteWrites does
// (blocking or not, commands in the batch).
func TestWriteShortCut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	inner, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	w := wrapConn(inner, testRecord()).(*trackedTCPConn)
	defer w.Close()

	rng := rand.New(rand.NewPCG(10, 10))
	names := []string{"get", "set", "ping", "hgetall", "blpop", "BZPOPMIN", "xread", "wait", "multi", "exec", "discard", "mget", "del", "expire", "BLPOP", "wAit"}
	command := func() []byte {
		args := []string{names[rng.IntN(len(names))]}
		for range rng.IntN(11) {
			b := make([]byte, []int{0, 1, 9, 10, 99, 100, rng.IntN(120)}[rng.IntN(7)])
			for i := range b {
				b[i] = "0123456789abc\r\n*$"[rng.IntN(17)]
			}
			args = append(args, string(b))
		}
		return resp(args...)
	}
	shortCuts := 0
	for i := range 20000 {
		b := command()
		if rng.IntN(4) == 0 { // a pipeline
			b = cat(b, command())
		}
		if rng.IntN(8) == 0 { // cut, as a full write buffer is
			b = b[:rng.IntN(len(b)+1)]
		}
		viaTCP, viaNote := testRecord(), testRecord()
		if rng.IntN(2) == 0 { // a connection that had a blocking command before
			viaTCP.req, viaNote.req = &reqScanner{batch: 3}, &reqScanner{batch: 3}
		}
		w.tc.addr.rec = viaTCP
		before := w.slowWrites
		if n, err := w.Write(b); n != len(b) || err != nil {
			t.Fatalf("write %d: %d %v", i, n, err)
		}
		viaNote.noteWrites(b)
		q := scanQuick(b)
		short := q == len(b) && q != 0
		if took := w.slowWrites == before; took != short {
			t.Fatalf("%q: short cut taken %v, scanQuick %d of %d bytes", b, took, q, len(b))
		}
		if short {
			shortCuts++
		}
		if (viaTCP.blockDeadline.Load() != 0) != (viaNote.blockDeadline.Load() != 0) {
			t.Fatalf("%q: blocking via Write %v, via noteWrites %v", b, viaTCP.blockDeadline.Load() != 0, viaNote.blockDeadline.Load() != 0)
		}
		if (viaTCP.req == nil) != (viaNote.req == nil) || viaTCP.req != nil && viaTCP.req.batch != viaNote.req.batch {
			t.Fatalf("%q: scanner via Write %+v, via noteWrites %+v", b, viaTCP.req, viaNote.req)
		}
	}
	if shortCuts < 1000 || shortCuts > 19000 {
		t.Fatalf("%d short cuts of 20000 writes: the generator does not test both ways", shortCuts)
	}
	t.Logf("%d short cuts of 20000 writes", shortCuts)
}
