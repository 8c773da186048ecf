package failpoint

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// term is one step of a point's chain: [P%][N*]ACTION.
type term struct {
	// percent is the chance, in percent, that an evaluation acts (100:
	// always); one that does not act does not count.
	percent int
	// count is how many times it acts before the next term takes over;
	// 0 is without end.
	count int
	// action is what it does; 0 is off (nothing, but it counts).
	action Action
	// sleep is how long a Sleep waits.
	sleep time.Duration
}

func (t term) String() string {
	var b strings.Builder
	if t.percent != 100 {
		fmt.Fprintf(&b, "%d%%", t.percent)
	}
	if t.count != 0 {
		fmt.Fprintf(&b, "%d*", t.count)
	}
	switch t.action {
	case 0:
		b.WriteString("off")
	case Error:
		b.WriteString("error")
	case Kill:
		b.WriteString("kill")
	case Sleep:
		fmt.Fprintf(&b, "sleep(%s)", t.sleep)
	}
	return b.String()
}

// parse reads a configuration: NAME=TERMS entries separated by ";"
// (blank entries and spaces around them ignored), each name once and in
// the catalogue, each term one its point can take.
func parse(s string) (map[string][]term, error) {
	out := map[string][]term{}
	for _, entry := range strings.Split(s, ";") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, terms, ok := strings.Cut(entry, "=")
		name = strings.TrimSpace(name)
		if !ok {
			return nil, fmt.Errorf("%q: want NAME=ACTION", entry)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("%s: named twice", name)
		}
		ts, err := parseTerms(name, terms)
		if err != nil {
			return nil, err
		}
		out[name] = ts
	}
	return out, nil
}

// parseTerms reads point name's chain: TERM{->TERM}, each
// [PERCENT%][COUNT*]ACTION with ACTION off, error, kill or
// sleep(DURATION). Every term but the last needs a count, else the
// terms after it could never act.
func parseTerms(name, s string) ([]term, error) {
	p, ok := Lookup(name)
	if !ok {
		return nil, fmt.Errorf("%s: no such failpoint (the catalogue is in docs/failpoints.md)", name)
	}
	parts := strings.Split(s, "->")
	out := make([]term, 0, len(parts))
	for i, part := range parts {
		t, err := parseTerm(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("%s=%s: %w", name, strings.TrimSpace(s), err)
		}
		if t.action != 0 && p.Actions&t.action == 0 {
			return nil, fmt.Errorf("%s=%s: %s cannot %s there (it can: %s)", name, strings.TrimSpace(s), name, t.action, p.Actions)
		}
		if t.count == 0 && i < len(parts)-1 {
			return nil, fmt.Errorf("%s=%s: %q has no count (N*), so the terms after it would never act", name, strings.TrimSpace(s), part)
		}
		out = append(out, t)
	}
	return out, nil
}

func parseTerm(s string) (term, error) {
	t := term{percent: 100}
	if pct, rest, ok := strings.Cut(s, "%"); ok {
		n, err := strconv.Atoi(pct)
		if err != nil || n < 1 || n > 100 {
			return t, fmt.Errorf("%q: the chance must be 1%% to 100%%", s)
		}
		t.percent, s = n, rest
	}
	if cnt, rest, ok := strings.Cut(s, "*"); ok {
		n, err := strconv.Atoi(cnt)
		if err != nil || n < 1 {
			return t, fmt.Errorf("%q: the count must be a whole number from 1", s)
		}
		t.count, s = n, rest
	}
	switch {
	case s == "off":
	case s == "error":
		t.action = Error
	case s == "kill":
		t.action = Kill
	case strings.HasPrefix(s, "sleep(") && strings.HasSuffix(s, ")"):
		d, err := time.ParseDuration(s[len("sleep(") : len(s)-1])
		if err != nil || d <= 0 {
			return t, fmt.Errorf("%q: sleep takes a positive duration with its unit, as sleep(200ms)", s)
		}
		t.action, t.sleep = Sleep, d
	case s == "":
		return t, fmt.Errorf("no action: want off, error, kill or sleep(DURATION)")
	default:
		return t, fmt.Errorf("%q: not an action: want off, error, kill or sleep(DURATION)", s)
	}
	return t, nil
}
