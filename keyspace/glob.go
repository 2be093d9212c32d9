package keyspace

// globMatch reports whether s matches the Redis glob pattern p with the
// semantics of PSUBSCRIBE and KEYS: * any run of bytes, ? one byte,
// [abc] [^abc] [a-z] classes, and \ escaping the next byte. Matching is
// byte-wise and case-sensitive, as in Redis.
func globMatch(p, s string) bool {
	for len(p) > 0 {
		switch p[0] {
		case '*':
			for len(p) > 1 && p[1] == '*' {
				p = p[1:]
			}
			if len(p) == 1 {
				return true
			}
			for i := 0; i <= len(s); i++ {
				if globMatch(p[1:], s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if len(s) == 0 {
				return false
			}
			p, s = p[1:], s[1:]
		case '[':
			if len(s) == 0 {
				return false
			}
			var ok bool
			ok, p = matchClass(p[1:], s[0])
			if !ok {
				return false
			}
			s = s[1:]
		case '\\':
			if len(p) >= 2 {
				p = p[1:]
			}
			fallthrough
		default:
			if len(s) == 0 || p[0] != s[0] {
				return false
			}
			p, s = p[1:], s[1:]
		}
	}
	return len(s) == 0
}

// matchClass matches c against the class that starts right after '[' in p
// and returns the pattern after the closing ']' (or the end of p when the
// class is not closed, as Redis does).
func matchClass(p string, c byte) (bool, string) {
	negate := len(p) > 0 && p[0] == '^'
	if negate {
		p = p[1:]
	}
	matched := false
	for {
		if len(p) == 0 {
			break
		}
		if p[0] == ']' {
			p = p[1:]
			break
		}
		if p[0] == '\\' && len(p) >= 2 {
			if p[1] == c {
				matched = true
			}
			p = p[2:]
			continue
		}
		if len(p) >= 3 && p[1] == '-' {
			lo, hi := p[0], p[2]
			if lo > hi {
				lo, hi = hi, lo
			}
			if c >= lo && c <= hi {
				matched = true
			}
			p = p[3:]
			continue
		}
		if p[0] == c {
			matched = true
		}
		p = p[1:]
	}
	return matched != negate, p
}

// globHasMeta reports whether p contains glob metacharacters.
func globHasMeta(p string) bool {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '*', '?', '[', '\\':
			return true
		}
	}
	return false
}

// EscapePattern escapes the glob metacharacters (* ? [ ] \) in s, so that
// the result, as a key pattern for Handle, matches the key s only.
func EscapePattern(s string) string { return globEscape(s) }

// PrefixPattern returns a key pattern for Handle that matches every key
// starting with the literal prefix, whatever characters it contains:
// PrefixPattern("cache[eu]:") is `cache\[eu\]:*`.
func PrefixPattern(prefix string) string { return globEscape(prefix) + "*" }

// globEscape escapes s so that it matches only itself as a glob.
func globEscape(s string) string {
	if !globHasMeta(s) && !containsByte(s, ']') {
		return s
	}
	b := make([]byte, 0, len(s)+4)
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			b = append(b, '\\')
		}
		b = append(b, s[i])
	}
	return string(b)
}

func containsByte(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}
