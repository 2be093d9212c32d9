package keyspace

import (
	"fmt"
	"strconv"
	"strings"
)

// flagSet is a parsed notify-keyspace-events value: one bit per flag letter.
// "A" is expanded into its members when parsed.
type flagSet uint32

// flagInfo describes one notify-keyspace-events letter.
type flagInfo struct {
	letter byte
	bit    flagSet
	what   string
	// since is the first server version (major*100+minor) that knows the
	// letter; 0 means every version with keyspace notifications.
	since int
}

const (
	flagKeyspace    flagSet = 1 << iota // K
	flagKeyevent                        // E
	flagGeneric                         // g
	flagString                          // $
	flagList                            // l
	flagSet_                            // s
	flagHash                            // h
	flagZSet                            // z
	flagStream                          // t
	flagModule                          // d
	flagExpired                         // x
	flagEvicted                         // e
	flagMiss                            // m
	flagNew                             // n
	flagOverwritten                     // o
	flagTypeChanged                     // c
)

// flagAll is what "A" stands for: g$lshztxed.
const flagAll = flagGeneric | flagString | flagList | flagSet_ | flagHash |
	flagZSet | flagStream | flagExpired | flagEvicted | flagModule

// flagClasses are the bits that select events (everything but K and E).
const flagClasses = flagAll | flagMiss | flagNew | flagOverwritten | flagTypeChanged

var flagTable = []flagInfo{
	{'K', flagKeyspace, "keyspace channels (__keyspace@<db>__:<key>)", 0},
	{'E', flagKeyevent, "keyevent channels (__keyevent@<db>__:<event>)", 0},
	{'g', flagGeneric, "generic commands (DEL, EXPIRE, RENAME, ...)", 0},
	{'$', flagString, "string commands", 0},
	{'l', flagList, "list commands", 0},
	{'s', flagSet_, "set commands", 0},
	{'h', flagHash, "hash commands", 0},
	{'z', flagZSet, "sorted set commands", 0},
	{'t', flagStream, "stream commands", 500},
	{'d', flagModule, "module key type events", 700},
	{'x', flagExpired, "expired events", 0},
	{'e', flagEvicted, "evicted events", 0},
	{'m', flagMiss, "key miss events", 600},
	{'n', flagNew, "new key events", 700},
	{'o', flagOverwritten, "overwritten events", 802},
	{'c', flagTypeChanged, "type-changed events", 802},
}

func flagByLetter(c byte) (flagInfo, bool) {
	for _, f := range flagTable {
		if f.letter == c {
			return f, true
		}
	}
	return flagInfo{}, false
}

// parseFlags parses a notify-keyspace-events value as the application asks
// for it: every letter must be known, at least one of K and E and at least
// one event class must be present.
func parseFlags(s string) (flagSet, error) {
	if s == "" {
		s = DefaultFlags
	}
	var fs flagSet
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == 'A' {
			fs |= flagAll
			continue
		}
		f, ok := flagByLetter(c)
		if !ok {
			return 0, fmt.Errorf("%w: unknown flag %q in %q (known: KEg$lshztdxemnoc and A)", ErrBadFlags, string(rune(c)), s)
		}
		fs |= f.bit
	}
	if fs&(flagKeyspace|flagKeyevent) == 0 {
		return 0, fmt.Errorf("%w: %q has neither K (keyspace) nor E (keyevent): Redis would publish nothing", ErrBadFlags, s)
	}
	if fs&flagClasses == 0 {
		return 0, fmt.Errorf("%w: %q selects no event class (e.g. A, g, $, x)", ErrBadFlags, s)
	}
	return fs, nil
}

// parseServerFlags reads the value a server reports for
// notify-keyspace-events. Letters this package does not know (from a newer
// server) are ignored here; merge keeps them because it only appends.
func parseServerFlags(s string) flagSet {
	var fs flagSet
	for i := 0; i < len(s); i++ {
		if s[i] == 'A' {
			fs |= flagAll
			continue
		}
		if f, ok := flagByLetter(s[i]); ok {
			fs |= f.bit
		}
	}
	return fs
}

// String returns the letters of fs in table order, using A when all of its
// members are present.
func (fs flagSet) String() string {
	var b strings.Builder
	rest := fs
	if fs&flagAll == flagAll {
		b.WriteByte('A')
		rest &^= flagAll
	}
	for _, f := range flagTable {
		if rest&f.bit != 0 {
			b.WriteByte(f.letter)
		}
	}
	return b.String()
}

// forVersion returns the flags the application needs on a server of the
// given version (0 = unknown), and an error naming a flag that server does
// not know. The module class d is part of A only on servers that know it.
func (fs flagSet) forVersion(version int, requested string) (flagSet, error) {
	if version == 0 {
		if fs&(flagOverwritten|flagTypeChanged) != 0 {
			return 0, fmt.Errorf("%w: flags o and c need Redis 8.2+ and the server version is unknown (INFO server unavailable)", ErrUnsupportedFlag)
		}
		return fs, nil
	}
	explicit := parseServerFlags(strings.ReplaceAll(requested, "A", ""))
	for _, f := range flagTable {
		if fs&f.bit == 0 || f.since == 0 || version >= f.since {
			continue
		}
		if f.bit&flagAll != 0 && explicit&f.bit == 0 {
			fs &^= f.bit // came from A: an older server's A lacks it
			continue
		}
		return 0, fmt.Errorf("%w: flag %q (%s) needs Redis %d.%d+, server is %s",
			ErrUnsupportedFlag, string(rune(f.letter)), f.what, f.since/100, f.since%100, versionString(version))
	}
	return fs, nil
}

// mergeFlags returns the value to CONFIG SET so that the server has
// everything in need while keeping everything it has: current followed by
// the missing letters (A when need covers all of A). ok is false when
// nothing is missing.
func mergeFlags(current string, need flagSet) (merged string, ok bool) {
	have := parseServerFlags(current)
	missing := need &^ have
	if missing == 0 {
		return current, false
	}
	var b strings.Builder
	b.WriteString(current)
	if need&flagAll == flagAll && missing&flagAll != 0 {
		b.WriteByte('A')
		missing &^= flagAll
	}
	for _, f := range flagTable {
		if missing&f.bit != 0 {
			b.WriteByte(f.letter)
		}
	}
	return b.String(), true
}

// parseVersion turns "7.0.15" into 700 (major*100+minor); 0 when unparsable.
func parseVersion(s string) int {
	parts := strings.SplitN(strings.TrimSpace(s), ".", 3)
	if len(parts) < 2 {
		return 0
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || major <= 0 || minor < 0 || minor > 99 {
		return 0
	}
	return major*100 + minor
}

func versionString(v int) string {
	if v == 0 {
		return "unknown"
	}
	return fmt.Sprintf("%d.%d", v/100, v%100)
}
