package keyspace

import "testing"

func TestGlobMatch(t *testing.T) {
	tests := []struct {
		p, s string
		want bool
	}{
		{"*", "", true},
		{"*", "anything", true},
		{"user:*", "user:1", true},
		{"user:*", "user:", true},
		{"user:*", "users:1", false},
		{"user:?", "user:1", true},
		{"user:?", "user:12", false},
		{"h[ae]llo", "hello", true},
		{"h[ae]llo", "hillo", false},
		{"h[^e]llo", "hallo", true},
		{"h[^e]llo", "hello", false},
		{"h[a-b]llo", "hbllo", true},
		{"h[b-a]llo", "hallo", true}, // reversed range, as Redis
		{"h[a-b]llo", "hcllo", false},
		{`h\*llo`, "h*llo", true},
		{`h\*llo`, "hello", false},
		{`[\]]`, "]", true},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
		{"**x", "abx", true},
		{"a/*", "a/b/c", true}, // * crosses '/', unlike path.Match
		{"", "", true},
		{"", "a", false},
		{"[abc", "a", true}, // unclosed class, as Redis
	}
	for _, tt := range tests {
		if got := globMatch(tt.p, tt.s); got != tt.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", tt.p, tt.s, got, tt.want)
		}
	}
}

func TestGlobEscape(t *testing.T) {
	for _, s := range []string{"plain", "a*b", "x[1]", `back\slash`, "q?"} {
		e := globEscape(s)
		if !globMatch(e, s) {
			t.Errorf("globEscape(%q) = %q does not match itself", s, e)
		}
		if s != "plain" && globMatch(e, s+"x") {
			t.Errorf("globEscape(%q) = %q matches more", s, e)
		}
	}
}

func TestPrefixPattern(t *testing.T) {
	p := PrefixPattern("cache[eu]:*")
	if p != `cache\[eu\]:\**` {
		t.Errorf("PrefixPattern = %q", p)
	}
	for key, want := range map[string]bool{"cache[eu]:*1": true, "cache[eu]:*": true, "cachee:*1": false, "cache[eu]:1": false} {
		if got := globMatch(p, key); got != want {
			t.Errorf("%q matches %q = %v, want %v", p, key, got, want)
		}
	}
	if e := EscapePattern("a?b"); !globMatch(e, "a?b") || globMatch(e, "axb") {
		t.Errorf("EscapePattern(a?b) = %q", e)
	}
}
