package bullmq

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// cronSpec is a parsed cron pattern: five fields (minute hour day-of-month
// month day-of-week) or six with seconds first, as Node's cron-parser reads
// them. Supported: *, ?, numbers, ranges a-b, steps */n a-b/n a/n, lists,
// month and weekday names, and 7 for Sunday. Not supported: L, W, #, H.
type cronSpec struct {
	sec, min, hour, dom, month, dow uint64
	domAny, dowAny                  bool
}

type cronField struct {
	lo, hi int
	names  map[string]int
}

var (
	monthNames = map[string]int{"jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
		"jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12}
	dayNames   = map[string]int{"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
	cronFields = [6]cronField{{0, 59, nil}, {0, 59, nil}, {0, 23, nil}, {1, 31, nil}, {1, 12, monthNames}, {0, 7, dayNames}}
)

func parseCron(expr string) (*cronSpec, error) {
	f := strings.Fields(expr)
	switch len(f) {
	case 5:
		f = append([]string{"0"}, f...)
	case 6:
	default:
		return nil, fmt.Errorf("cron pattern %q: want 5 or 6 fields, got %d", expr, len(f))
	}
	var bits [6]uint64
	for i, s := range f {
		b, err := parseCronField(s, cronFields[i])
		if err != nil {
			return nil, fmt.Errorf("cron pattern %q: field %d: %w", expr, i+1, err)
		}
		bits[i] = b
	}
	if bits[5]&(1<<7) != 0 { // 7 is Sunday
		bits[5] |= 1
	}
	return &cronSpec{
		sec: bits[0], min: bits[1], hour: bits[2], dom: bits[3], month: bits[4], dow: bits[5] &^ (1 << 7),
		domAny: f[3] == "*" || f[3] == "?", dowAny: f[5] == "*" || f[5] == "?",
	}, nil
}

func parseCronField(s string, fd cronField) (uint64, error) {
	var bits uint64
	for _, part := range strings.Split(s, ",") {
		rng, stepS, hasStep := strings.Cut(part, "/")
		step := 1
		if hasStep {
			n, err := strconv.Atoi(stepS)
			if err != nil || n <= 0 {
				return 0, fmt.Errorf("bad step %q", part)
			}
			step = n
		}
		lo, hi := fd.lo, fd.hi
		switch {
		case rng == "*" || rng == "?":
		case strings.Contains(rng, "-"):
			a, b, _ := strings.Cut(rng, "-")
			var err error
			if lo, err = cronValue(a, fd); err != nil {
				return 0, err
			}
			if hi, err = cronValue(b, fd); err != nil {
				return 0, err
			}
			if lo > hi {
				return 0, fmt.Errorf("bad range %q", rng)
			}
		default:
			v, err := cronValue(rng, fd)
			if err != nil {
				return 0, err
			}
			lo = v
			if !hasStep {
				hi = v
			}
		}
		for v := lo; v <= hi; v += step {
			bits |= 1 << uint(v)
		}
	}
	return bits, nil
}

func cronValue(s string, fd cronField) (int, error) {
	if v, ok := fd.names[strings.ToLower(s)]; ok {
		return v, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < fd.lo || v > fd.hi {
		return 0, fmt.Errorf("bad value %q (want %d..%d)", s, fd.lo, fd.hi)
	}
	return v, nil
}

func (c *cronSpec) dayMatches(t time.Time) bool {
	dom := c.dom&(1<<uint(t.Day())) != 0
	dow := c.dow&(1<<uint(t.Weekday())) != 0
	switch {
	case c.domAny && c.dowAny:
		return true
	case c.domAny:
		return dow
	case c.dowAny:
		return dom
	default:
		return dom || dow // both restricted: either matches, as in cron
	}
}

// next returns the first time strictly after t (second resolution) that
// matches, in t's location; the zero time if none within five years.
func (c *cronSpec) next(t time.Time) time.Time {
	loc := t.Location()
	t = t.Truncate(time.Second).Add(time.Second)
	limit := t.AddDate(5, 0, 0)
	for t.Before(limit) {
		if c.month&(1<<uint(t.Month())) == 0 {
			t = time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, loc)
			continue
		}
		if !c.dayMatches(t) {
			t = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc)
			continue
		}
		if c.hour&(1<<uint(t.Hour())) == 0 {
			t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour()+1, 0, 0, 0, loc)
			continue
		}
		if c.min&(1<<uint(t.Minute())) == 0 {
			t = t.Truncate(time.Minute).Add(time.Minute)
			continue
		}
		if c.sec&(1<<uint(t.Second())) == 0 {
			t = t.Add(time.Second)
			continue
		}
		return t
	}
	return time.Time{}
}

// nextCron returns the next run of pattern after from, in time zone tz
// ("" is the local zone, as in Node).
func nextCron(pattern, tz string, from time.Time) (time.Time, error) {
	spec, err := parseCron(pattern)
	if err != nil {
		return time.Time{}, err
	}
	loc := time.Local
	if tz != "" {
		if loc, err = time.LoadLocation(tz); err != nil {
			return time.Time{}, fmt.Errorf("cron time zone %q: %w", tz, err)
		}
	}
	t := spec.next(from.In(loc))
	if t.IsZero() {
		return t, fmt.Errorf("cron pattern %q has no run within five years", pattern)
	}
	return t, nil
}
