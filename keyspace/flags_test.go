package keyspace

import (
	"errors"
	"testing"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr error
	}{
		{"", "AKE", nil},
		{"KEA", "AKE", nil},
		{"Ex", "Ex", nil},
		{"Kg$lshztdxe", "AK", nil},
		{"KAmn", "AKmn", nil},
		{"Eoc", "Eoc", nil},
		{"K$", "K$", nil},
		{"KEQ", "", ErrBadFlags},
		{"A", "", ErrBadFlags},  // neither K nor E
		{"KE", "", ErrBadFlags}, // no event class
		{"Kx ", "", ErrBadFlags},
		{"kx", "", ErrBadFlags}, // flags are case-sensitive
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			fs, err := parseFlags(tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("parseFlags(%q) err = %v, want %v", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseFlags(%q): %v", tt.in, err)
			}
			if got := fs.String(); got != tt.want {
				t.Errorf("parseFlags(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestForVersion(t *testing.T) {
	tests := []struct {
		flags   string
		version int
		want    string
		wantErr bool
	}{
		{"KEA", 700, "AKE", false},
		{"KEA", 0, "AKE", false},
		{"KEA", 602, "g$lshztxeKE", false}, // 6.2's A has no d
		{"Kd", 602, "", true},              // d asked for explicitly
		{"Kn", 700, "Kn", false},
		{"Kn", 602, "", true},
		{"Ko", 700, "", true}, // Redis 7.0.15 here: o and c unsupported
		{"Ec", 700, "", true},
		{"Ko", 0, "", true}, // unknown version: cannot confirm
		{"Koc", 802, "Koc", false},
		{"Koc", 900, "Koc", false},
	}
	for _, tt := range tests {
		fs, err := parseFlags(tt.flags)
		if err != nil {
			t.Fatal(err)
		}
		got, err := fs.forVersion(tt.version, tt.flags)
		if tt.wantErr {
			if !errors.Is(err, ErrUnsupportedFlag) {
				t.Errorf("%q on %d: err = %v, want ErrUnsupportedFlag", tt.flags, tt.version, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q on %d: %v", tt.flags, tt.version, err)
			continue
		}
		if want := parseServerFlags(tt.want); got != want {
			t.Errorf("%q on %d = %q, want %q", tt.flags, tt.version, got, want)
		}
	}
}

func TestMergeFlags(t *testing.T) {
	tests := []struct {
		current, need, want string
		changed             bool
	}{
		{"", "KEA", "AKE", true},
		{"xE", "KEA", "xEAK", true},
		{"AKE", "Ex", "AKE", false},
		{"xE", "K$", "xEK$", true},
		{"Kl", "Ex", "KlEx", true},
		{"AKEm", "KEA", "AKEm", false},
		{"gE", "Kx", "gEKx", true},
	}
	for _, tt := range tests {
		need, err := parseFlags(tt.need)
		if err != nil {
			t.Fatal(err)
		}
		got, changed := mergeFlags(tt.current, need)
		if got != tt.want || changed != tt.changed {
			t.Errorf("mergeFlags(%q, %q) = %q, %v; want %q, %v", tt.current, tt.need, got, changed, tt.want, tt.changed)
		}
		// Never removes: everything the server had is still there.
		if have := parseServerFlags(tt.current); parseServerFlags(got)&have != have {
			t.Errorf("mergeFlags(%q, %q) = %q lost flags", tt.current, tt.need, got)
		}
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]int{"7.0.15": 700, "8.2.1": 802, "6.2": 602, "": 0, "x.y": 0, "10.4.0\r": 1004} {
		if got := parseVersion(in); got != want {
			t.Errorf("parseVersion(%q) = %d, want %d", in, got, want)
		}
	}
}
