package spec

import (
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"hostel/internal/postgres"
)

var (
	serviceName  = regexp.MustCompile(`^[a-z][a-z0-9-]{0,40}$`)
	secretName   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	databaseName = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,62}$`)
	hostLabel    = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	envName      = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// reservedEnv are variables hostel sets itself; a spec may not override them.
var reservedEnv = map[string]bool{
	"PORT": true, "HOST": true, "STATE_DIRECTORY": true, "RUNTIME_DIRECTORY": true,
	"CREDENTIALS_DIRECTORY": true, "DATABASE_URL": true, "HOSTEL_SERVICE": true,
	"HOSTEL_VERSION": true, "NOTIFY_SOCKET": true,
}

// Validate checks the spec's meaning: names, references, cycles, domains.
// Errors are *Error and name the service and field; the first error found,
// in service-name order, is returned.
func (s *Spec) Validate() error {
	if s.Zone != "" && !validHost(s.Zone) {
		return &Error{Field: "zone", Msg: fmt.Sprintf("invalid host name %q", s.Zone)}
	}
	if s.ACME != nil && s.ACME.CA != "" && !strings.HasPrefix(s.ACME.CA, "https://") {
		return &Error{Field: "acme.ca", Msg: fmt.Sprintf("want an https:// directory URL, not %q", s.ACME.CA)}
	}
	if s.Postgres != nil {
		if err := postgres.CheckAdmin(s.Postgres.Admin); err != nil {
			return &Error{Field: "postgres.admin", Msg: err.Error()}
		}
	}
	hosts := map[string]string{} // host → "service" that claims it
	dbs := map[string]string{}
	for _, name := range s.Names() {
		svc := s.Services[name]
		fail := func(field, format string, a ...any) error {
			return &Error{Service: name, Field: field, Msg: fmt.Sprintf(format, a...)}
		}
		if !serviceName.MatchString(name) {
			return &Error{Service: name, Msg: "invalid service name (want [a-z][a-z0-9-]{0,40})"}
		}
		if svc == nil {
			return fail("", "want a JSON object")
		}
		if svc.Package != "" && !filepath.IsAbs(svc.Package) {
			return fail("package", "want an absolute path or store path, not %q", svc.Package)
		}
		if len(svc.Exec) == 0 || svc.Exec[0] == "" {
			return fail("exec", "must name a program")
		}
		if svc.Package == "" && strings.Contains(svc.Exec[0], "/") && !filepath.IsAbs(svc.Exec[0]) {
			return fail("exec", "relative path %q needs a package", svc.Exec[0])
		}
		for _, k := range sortedKeys(svc.Env) {
			if !envName.MatchString(k) {
				return fail("env."+k, "invalid variable name")
			}
			if reservedEnv[k] || strings.HasSuffix(k, "_URL") && s.isNeedVar(svc, k) {
				return fail("env."+k, "is set by hostel")
			}
			if strings.ContainsRune(svc.Env[k], 0) {
				return fail("env."+k, "contains a NUL byte")
			}
		}
		if svc.Health != nil && svc.Health.Path != "" && !strings.HasPrefix(svc.Health.Path, "/") {
			return fail("health.path", "want a path starting with /, not %q", svc.Health.Path)
		}
		if svc.Postgres != nil {
			db := svc.Postgres.Name(name)
			if !databaseName.MatchString(db) {
				return fail("postgres.database", "invalid database name %q", db)
			}
			if other, ok := dbs[db]; ok {
				return fail("postgres.database", "database %q is also used by service %q", db, other)
			}
			dbs[db] = name
		}
		seen := map[string]bool{}
		for _, sec := range svc.Secrets {
			if !secretName.MatchString(sec) {
				return fail("secrets", "invalid secret name %q", sec)
			}
			if seen[sec] {
				return fail("secrets", "secret %q listed twice", sec)
			}
			seen[sec] = true
		}
		if svc.Release != nil && (len(svc.Release) == 0 || svc.Release[0] == "") {
			return fail("release", "must name a program")
		}
		if _, err := ParseMemory(svc.Memory); err != nil {
			return fail("memory", "%v", err)
		}
		if svc.CPU < 0 {
			return fail("cpu", "must not be negative")
		}
		clear(seen)
		for _, n := range svc.Needs {
			if _, ok := s.Services[n]; !ok {
				return fail("needs", "needs %q, which is not defined", n)
			}
			if n == name {
				return fail("needs", "needs itself")
			}
			if seen[n] {
				return fail("needs", "needs %q twice", n)
			}
			seen[n] = true
		}
		for _, d := range svc.Domains {
			if !validHost(d) {
				return fail("domains", "invalid host name %q", d)
			}
			if other, ok := hosts[d]; ok {
				return fail("domains", "domain %q is also claimed by %s", d, other)
			}
			hosts[d] = fmt.Sprintf("service %q", name)
		}
		if len(svc.Redirects) > 0 && len(svc.Domains) == 0 {
			return fail("redirects", "redirects need a domain to redirect to")
		}
		for _, d := range svc.Redirects {
			if !validHost(d) {
				return fail("redirects", "invalid host name %q", d)
			}
			if other, ok := hosts[d]; ok {
				return fail("redirects", "redirect %q is also claimed by %s", d, other)
			}
			hosts[d] = fmt.Sprintf("service %q", name)
		}
	}
	// Domains under the zone would shadow immutable version names.
	zone := "." + s.ZoneOrDefault()
	for h, owner := range hosts {
		if strings.HasSuffix(h, zone) {
			return &Error{Service: strings.Trim(strings.TrimPrefix(owner, "service "), `"`), Field: "domains",
				Msg: fmt.Sprintf("%q is inside the zone %q, which hostel keeps for version names", h, s.ZoneOrDefault())}
		}
	}
	if cycle := s.findCycle(); cycle != nil {
		return &Error{Service: cycle[0], Field: "needs", Msg: "dependency cycle: " + strings.Join(cycle, " → ")}
	}
	return nil
}

// isNeedVar reports whether k is the variable hostel sets for one of svc's needs.
func (s *Spec) isNeedVar(svc *Service, k string) bool {
	for _, n := range svc.Needs {
		if EnvName(n) == k {
			return true
		}
	}
	return false
}

// findCycle returns a dependency cycle as a path that starts and ends at the same service.
func (s *Spec) findCycle() []string {
	const (
		white = iota
		grey
		black
	)
	color := map[string]int{}
	var stack []string
	var visit func(n string) []string
	visit = func(n string) []string {
		color[n] = grey
		stack = append(stack, n)
		for _, m := range s.Services[n].Needs {
			switch color[m] {
			case grey:
				for i, x := range stack {
					if x == m {
						return append(append([]string{}, stack[i:]...), m)
					}
				}
			case white:
				if c := visit(m); c != nil {
					return c
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[n] = black
		return nil
	}
	for _, n := range s.Names() {
		if color[n] == white {
			if c := visit(n); c != nil {
				return c
			}
		}
	}
	return nil
}

func validHost(h string) bool {
	if len(h) == 0 || len(h) > 253 || strings.ToLower(h) != h {
		return false
	}
	labels := strings.Split(h, ".")
	for _, l := range labels {
		if !hostLabel.MatchString(l) {
			return false
		}
	}
	return true
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
