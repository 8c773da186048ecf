//go:build failpoints

package failpoint

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Enabled is true: this binary was built with -tags failpoints, and its
// sites act as HOSTEL_FAILPOINTS says.
const Enabled = true

// point is an armed failpoint: its chain and how far it has gone.
type point struct {
	name string
	mu   sync.Mutex
	// terms are the chain; terms[0] is the one acting, its count left
	// in left. The chain is spent when terms is empty.
	terms []term
	left  int
}

// armed are the armed points, by name; replaced whole by Enable and
// Disable, read without a lock by every site.
var armed atomic.Pointer[map[string]*point]

func init() {
	cfg := os.Getenv(EnvVar)
	if name := os.Getenv(KillEnvVar); name != "" {
		cfg += ";" + name + "=kill"
	}
	points, err := parse(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", EnvVar, err)
		os.Exit(2)
	}
	m := map[string]*point{}
	for name, terms := range points {
		m[name] = newPoint(name, terms)
	}
	armed.Store(&m)
}

func newPoint(name string, terms []term) *point {
	return &point{name: name, terms: terms, left: terms[0].count}
}

// next returns the term to act on now, if any acts: the chain's first
// that is not spent, if its chance says so.
func (p *point) next() (term, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.terms) == 0 {
		return term{}, false
	}
	t := p.terms[0]
	if t.percent < 100 && rand.IntN(100) >= t.percent {
		return term{}, false
	}
	if t.count != 0 {
		if p.left--; p.left == 0 {
			p.terms = p.terms[1:]
			if len(p.terms) > 0 {
				p.left = p.terms[0].count
			}
		}
	}
	return t, t.action != 0
}

// fire evaluates point name and does what it says: it waits, kills the
// process, or returns the error to inject.
func fire(name string) error {
	m := armed.Load()
	if m == nil || len(*m) == 0 {
		return nil
	}
	p := (*m)[name]
	if p == nil {
		return nil
	}
	t, ok := p.next()
	if !ok {
		return nil
	}
	fmt.Fprintf(os.Stderr, "failpoint %s: %s\n", name, term{percent: 100, action: t.action, sleep: t.sleep})
	switch t.action {
	case Sleep:
		time.Sleep(t.sleep)
	case Kill:
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not handled: nothing runs past this line
	case Error:
		return &pointError{name}
	}
	return nil
}

// Hit is a failpoint where the process may wait or die (Sleep, Kill).
func Hit(name string) {
	if err := fire(name); err != nil {
		// parse refuses error for a point without it; TestSitesAreCatalogued
		// keeps Hit to such points.
		panic(fmt.Sprintf("failpoint %s: an error armed at a site that cannot fail", name))
	}
}

// Inject is a failpoint where the process may wait or die, or the site
// fail: it returns the error to return (nil to go on).
func Inject(name string) error {
	return fire(name)
}

// Enable arms point name with terms (as in HOSTEL_FAILPOINTS: "error",
// "1*kill", "sleep(50ms)", …), replacing what it had, for a test in the
// process. Only in a binary built with -tags failpoints.
func Enable(name, terms string) error {
	ts, err := parseTerms(name, terms)
	if err != nil {
		return err
	}
	replace(name, newPoint(name, ts))
	return nil
}

// Disable disarms point name.
func Disable(name string) {
	replace(name, nil)
}

var replaceMu sync.Mutex

func replace(name string, p *point) {
	replaceMu.Lock()
	defer replaceMu.Unlock()
	m := maps.Clone(*armed.Load())
	if p == nil {
		delete(m, name)
	} else {
		m[name] = p
	}
	armed.Store(&m)
}
