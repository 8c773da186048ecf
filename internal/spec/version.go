package spec

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Version identifies what shapes a service's process: the first 12 hex
// digits of a SHA-256 over its canonical identity.
type Version string

// Inputs are facts about a spec that are not in its JSON but shape its
// processes; the client gathers them from its repository and build.
type Inputs struct {
	// Digests maps a service to the content digest of its package, for
	// packages that are plain directories rather than store paths.
	Digests map[string]string `json:"digests,omitempty"`
	// Secrets maps a secret name to the SHA-256 of its ciphertext.
	Secrets map[string]string `json:"secrets,omitempty"`
}

// identity is what a version hashes. Field order and encoding/json's sorted
// map keys make its JSON canonical. Routing and placement fields (domains,
// redirects, idle, exclusive, old_versions, tls, hsts, replicas,
// placement) are deliberately absent: changing them restarts nothing.
// memory and cpu are in: they are the limits a process runs under (and,
// in cluster mode, also what it requests of a node).
type identity struct {
	Package       string            `json:"package,omitempty"`
	PackageDigest string            `json:"package_digest,omitempty"`
	Exec          []string          `json:"exec"`
	Env           map[string]string `json:"env,omitempty"`
	Health        *Health           `json:"health,omitempty"`
	Postgres      *Database         `json:"postgres,omitempty"`
	Release       []string          `json:"release,omitempty"`
	StopGrace     Duration          `json:"stop_grace,omitempty"`
	Memory        string            `json:"memory,omitempty"`
	CPU           float64           `json:"cpu,omitempty"`
	Secrets       map[string]string `json:"secrets,omitempty"`
	Needs         map[string]string `json:"needs,omitempty"`
}

// MarshalJSON writes a database as an object, so true and {} hash alike.
func (d Database) MarshalJSON() ([]byte, error) {
	type plain Database
	return json.Marshal(plain(d))
}

// Versions computes every service's version, dependencies first, so that a
// service's version covers the versions of everything it needs.
func Versions(s *Spec, in Inputs) (map[string]Version, error) {
	order, err := Order(s)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Version, len(order))
	for _, name := range order {
		svc := s.Services[name]
		id := identity{
			Package: svc.Package, PackageDigest: in.Digests[name], Exec: svc.Exec, Env: svc.Env,
			Health: svc.Health, Postgres: svc.Postgres, Release: svc.Release, StopGrace: svc.StopGrace,
			Memory: svc.Memory, CPU: svc.CPU,
		}
		if len(svc.Secrets) > 0 {
			id.Secrets = make(map[string]string, len(svc.Secrets))
			for _, sec := range svc.Secrets {
				id.Secrets[sec] = in.Secrets[sec]
			}
		}
		if len(svc.Needs) > 0 {
			id.Needs = make(map[string]string, len(svc.Needs))
			for _, n := range svc.Needs {
				id.Needs[n] = string(out[n])
			}
		}
		b, err := json.Marshal(id)
		if err != nil {
			return nil, fmt.Errorf("service %q: hashing: %w", name, err)
		}
		sum := sha256.Sum256(b)
		out[name] = Version(hex.EncodeToString(sum[:])[:12])
	}
	return out, nil
}

// Order returns the service names with every service after all it needs;
// ties are broken by name so the order is deterministic.
func Order(s *Spec) ([]string, error) {
	indeg := map[string]int{}
	dependents := map[string][]string{}
	for name, svc := range s.Services {
		indeg[name] += 0
		for _, n := range svc.Needs {
			if _, ok := s.Services[n]; !ok {
				return nil, &Error{Service: name, Field: "needs", Msg: fmt.Sprintf("needs %q, which is not defined", n)}
			}
			indeg[name]++
			dependents[n] = append(dependents[n], name)
		}
	}
	var ready []string
	for n, d := range indeg {
		if d == 0 {
			ready = append(ready, n)
		}
	}
	sort.Strings(ready)
	order := make([]string, 0, len(indeg))
	for len(ready) > 0 {
		n := ready[0]
		ready = ready[1:]
		order = append(order, n)
		var next []string
		for _, m := range dependents[n] {
			indeg[m]--
			if indeg[m] == 0 {
				next = append(next, m)
			}
		}
		if len(next) > 0 {
			ready = append(ready, next...)
			sort.Strings(ready)
		}
	}
	if len(order) != len(indeg) {
		return nil, &Error{Field: "needs", Msg: "dependency cycle"}
	}
	return order, nil
}

// Hash is the SHA-256 of the spec's canonical JSON with its inputs, in hex.
func Hash(s *Spec, in Inputs) string {
	b, _ := json.Marshal(struct {
		Spec   *Spec  `json:"spec"`
		Inputs Inputs `json:"inputs"`
	}{s, in})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// VersionHost is the immutable host name of one version of a service.
func VersionHost(service string, v Version, zone string) string {
	return service + "-" + string(v) + "." + zone
}

// ParseVersionHost splits an immutable host name into service and version.
func ParseVersionHost(host, zone string) (service string, v Version, ok bool) {
	rest, found := strings.CutSuffix(host, "."+zone)
	if !found {
		return "", "", false
	}
	i := strings.LastIndexByte(rest, '-')
	if i <= 0 || len(rest)-i-1 != 12 {
		return "", "", false
	}
	return rest[:i], Version(rest[i+1:]), true
}
