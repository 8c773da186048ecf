// Package routes is how a node's router follows the store: Table is the
// one function from the state (every environment's current generation,
// the pauses by hand) to the router's table, and a Follower watches the
// store and swaps the table it gives into the router, one step per change,
// reporting the revision it follows. The engine never swaps a table: it
// commits, and every node's router follows.
package routes

import (
	"encoding/json"
	"sort"
	"time"

	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// Pause is one pause by hand (hostel pause), as the engine keeps it in
// the store (store.KindPause, keyed by service): the service's requests
// are held until the record goes.
type Pause struct {
	// Max is how long a request is held before it gets 503.
	Max time.Duration `json:"max"`
	// Since is when the service was paused.
	Since time.Time `json:"since"`
}

// Pauses reads the pause records of recs, by service; a record that
// cannot be read holds nothing.
func Pauses(recs []store.Record) map[string]Pause {
	out := make(map[string]Pause, len(recs))
	for _, r := range recs {
		var p Pause
		if err := json.Unmarshal(r.Value, &p); err != nil || p.Max <= 0 {
			continue
		}
		out[r.Key] = p
	}
	return out
}

// Of is the table of a snapshot read with store.KindPause's records.
func Of(s *store.Snapshot) router.Table {
	paused := map[string]time.Duration{}
	for name, p := range Pauses(s.Records[store.KindPause]) {
		paused[name] = p.Max
	}
	return Table(s.Currents, paused)
}

// Table builds the routing table of the environments' current
// generations (by environment). Production's services answer on their
// domains and redirects, and its zone is the table's; a preview never
// changes them. A preview's services answer on SERVICE.ENV.ZONE
// (Internal) and, with previews.domain, on SERVICE.ENV.DOMAIN. paused
// are production's services paused by hand, with their bounds; a pause
// of a service production does not have holds nothing.
//
// The table's TLS policy follows the same names: a service's domains and
// redirects, and a preview's SERVICE.ENV.DOMAIN, are served over HTTPS
// unless its tls is false; production's domains and redirects add HSTS
// where the service's hsts says so (a preview's names never do: HSTS is a
// promise for a production name). Whichever service a name routes to
// gives its policy.
func Table(currents map[string]*spec.Generation, paused map[string]time.Duration) router.Table {
	t := router.Table{Domains: map[string]spec.VersionKey{}, Redirects: map[string]string{}, Zone: spec.DefaultZone}
	prod := currents[spec.DefaultEnv]
	if prod == nil {
		return t
	}
	t.Zone = prod.Spec.ZoneOrDefault()
	for name, bound := range paused {
		if prod.Spec.Services[name] != nil {
			if t.Paused == nil {
				t.Paused = map[string]time.Duration{}
			}
			t.Paused[name] = bound
		}
	}
	for name, svc := range prod.Spec.Services {
		key := prod.Instance(name)
		p := router.TLS{HTTPS: svc.TLSEnabled(), HSTS: svc.HSTS}
		for _, d := range svc.Domains {
			t.Domains[d] = key
			setTLS(&t, d, p)
		}
		for _, r := range svc.Redirects {
			t.Redirects[r] = svc.Domains[0]
			setTLS(&t, r, p)
		}
	}
	for _, env := range sortedEnvs(currents) {
		g := currents[env]
		if env == spec.DefaultEnv || g == nil {
			continue
		}
		for name := range g.Spec.Services {
			if t.Internal == nil {
				t.Internal = map[string]spec.VersionKey{}
			}
			t.Internal[PreviewHost(name, env, t.Zone)] = g.Instance(name)
			// previews.domain: a public name; production's domains win.
			if h := g.Spec.PreviewHost(name, env); h != "" {
				if _, taken := t.Domains[h]; !taken {
					t.Domains[h] = g.Instance(name)
					setTLS(&t, h, router.TLS{HTTPS: g.Spec.Services[name].TLSEnabled()})
				}
			}
		}
	}
	return t
}

// setTLS gives host the policy p in t; the table lists only names that
// have one.
func setTLS(t *router.Table, host string, p router.TLS) {
	if p == (router.TLS{}) {
		return
	}
	if t.TLS == nil {
		t.TLS = map[string]router.TLS{}
	}
	t.TLS[host] = p
}

// PreviewHost is the internal-zone name of service in preview environment
// env: SERVICE.ENV.ZONE.
func PreviewHost(service, env, zone string) string {
	return service + "." + env + "." + zone
}

// sortedEnvs returns the environments of currents in name order, so that
// two previews claiming one public name get the same answer every time.
func sortedEnvs(currents map[string]*spec.Generation) []string {
	envs := make([]string, 0, len(currents))
	for env := range currents {
		envs = append(envs, env)
	}
	sort.Strings(envs)
	return envs
}
