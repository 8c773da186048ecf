package failpoint

import (
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, in string
		want     map[string]string // point → its terms, as term.String joins them
	}{
		{"empty", "", map[string]string{}},
		{"blanks", " ; ;", map[string]string{}},
		{"one", "store-before-commit=error", map[string]string{"store-before-commit": "error"}},
		{"several, spaced", " store-after-commit = 1*kill ; store-watch-deliver=sleep(200ms);",
			map[string]string{"store-after-commit": "1*kill", "store-watch-deliver": "sleep(200ms)"}},
		{"chain", "store-after-txn=2*off->1*sleep(1s)->error",
			map[string]string{"store-after-txn": "2*off->1*sleep(1s)->error"}},
		{"chance", "router-before-swap=25%error", map[string]string{"router-before-swap": "25%error"}},
		{"chance and count", "router-before-swap=50%3*sleep(5ms)", map[string]string{"router-before-swap": "50%3*sleep(5ms)"}},
		{"hit point sleeps", "launch-after-start=sleep(1ms)", map[string]string{"launch-after-start": "sleep(1ms)"}},
		{"hit point kills", "launch-after-start=kill", map[string]string{"launch-after-start": "kill"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parse(tt.in)
			if err != nil {
				t.Fatalf("parse(%q): %v", tt.in, err)
			}
			if len(got) != len(tt.want) {
				t.Errorf("parse(%q): %d points, want %d", tt.in, len(got), len(tt.want))
			}
			for name, want := range tt.want {
				var s []string
				for _, term := range got[name] {
					s = append(s, term.String())
				}
				if g := strings.Join(s, "->"); g != want {
					t.Errorf("%s: got %q, want %q", name, g, want)
				}
			}
		})
	}
}

func TestParseRefuses(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"unknown point", "store-before-comit=error", "store-before-comit: no such failpoint"},
		{"no action", "store-before-commit", `"store-before-commit": want NAME=ACTION`},
		{"empty action", "store-before-commit=", "no action"},
		{"unknown action", "store-before-commit=panic", `"panic": not an action`},
		{"error where it cannot fail", "launch-after-start=error", "launch-after-start cannot error there (it can: sleep, kill)"},
		{"sleep where it does nothing", "store-lease-keepalive=sleep(1s)", "cannot sleep there (it can: error, kill)"},
		{"sleep without unit", "store-before-commit=sleep(100)", "sleep takes a positive duration with its unit"},
		{"sleep of nothing", "store-before-commit=sleep(0s)", "sleep takes a positive duration"},
		{"sleep unclosed", "store-before-commit=sleep(1s", "not an action"},
		{"kill with an argument", "store-before-commit=kill(9)", "not an action"},
		{"zero count", "store-before-commit=0*kill", "the count must be a whole number from 1"},
		{"bad count", "store-before-commit=x*kill", "the count must be"},
		{"chance over 100", "store-before-commit=101%kill", "the chance must be 1% to 100%"},
		{"chance of 0", "store-before-commit=0%kill", "the chance must be"},
		{"endless term first", "store-before-commit=error->kill", `"error" has no count`},
		{"named twice", "store-before-commit=error;store-before-commit=kill", "store-before-commit: named twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parse(tt.in)
			if err == nil {
				t.Fatalf("parse(%q) = %v, want an error", tt.in, got)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("parse(%q): %v, want it to say %q", tt.in, err, tt.want)
			}
		})
	}
}

func TestParseSleep(t *testing.T) {
	got, err := parse("store-watch-deliver=sleep(1.5s)")
	if err != nil {
		t.Fatal(err)
	}
	if d := got["store-watch-deliver"][0].sleep; d != 1500*time.Millisecond {
		t.Errorf("sleep(1.5s) sleeps %s", d)
	}
}
