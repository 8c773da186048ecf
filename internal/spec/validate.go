package spec

import (
	"fmt"
	"net"
	"net/mail"
	"net/url"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"hostel/internal/cgroup"
	"hostel/internal/postgres/conninfo"
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

// Bounds on what the spec may set. Each is checked once, here.
const (
	// MaxArgString is Linux's MAX_ARG_STRLEN: the most bytes one program
	// argument or one NAME=VALUE environment string may have, its NUL
	// terminator included. A longer one fails exec with E2BIG.
	MaxArgString = 128 << 10
	// MaxArgTotal bounds a process's arguments and the spec's environment
	// together: half of Linux's usual ARG_MAX (2 MiB), leaving the rest for
	// the variables hostel sets itself (PORT, DATABASE_URL, NAME_URL …).
	MaxArgTotal = 1 << 20
	// MinGrace and MaxGrace bound stop_grace: a process gets at least a
	// second to stop cleanly, and a deploy or shutdown never waits hours.
	MinGrace = time.Second
	MaxGrace = time.Hour
	// MinHealthTimeout and MaxHealthTimeout bound health.timeout.
	MinHealthTimeout = time.Second
	MaxHealthTimeout = time.Hour
	// MinHealthInterval and MaxHealthInterval bound health.interval, and
	// MaxHealthFailures health.failures (at least 1).
	MinHealthInterval = 100 * time.Millisecond
	MaxHealthInterval = time.Hour
	MaxHealthFailures = 100
	// MinIdle is the shortest idle: less would stop a service between two
	// requests of one page.
	MinIdle = time.Second
	// MaxReplicas bounds replicas: each runs on its own node, and a
	// thousand nodes is the largest cluster hostel is measured on.
	MaxReplicas = 1000
)

// Values of a service's old_versions.
const (
	OldVersionsStop     = "stop"
	OldVersionsCallable = "callable"
)

// Validate checks the spec's meaning: names, references, cycles, domains.
// Errors are *Error and name the service and field; the first error found,
// in service-name order, is returned.
func (s *Spec) Validate() error {
	zone := s.ZoneOrDefault()
	if s.Zone != "" {
		if msg := checkDNSName(s.Zone); msg != "" {
			return &Error{Field: "zone", Msg: msg}
		}
	}
	if s.ACME != nil && s.ACME.CA != "" && !strings.HasPrefix(s.ACME.CA, "https://") {
		return &Error{Field: "acme.ca", Msg: fmt.Sprintf("want an https:// directory URL, not %q", s.ACME.CA)}
	}
	if s.ACME != nil && s.ACME.Email != "" {
		if a, err := mail.ParseAddress(s.ACME.Email); err != nil || a.Address != s.ACME.Email {
			return &Error{Field: "acme.email", Msg: fmt.Sprintf("want an email address such as ops@example.org, not %q", s.ACME.Email)}
		}
	}
	if s.Postgres != nil {
		if err := conninfo.Check(s.Postgres.Admin); err != nil {
			return &Error{Field: "postgres.admin", Msg: err.Error()}
		}
	}
	if err := s.Previews.validate(); err != nil {
		return err
	}
	if s.Previews != nil && s.Previews.Domain != "" && inZone(s.Previews.Domain, zone) {
		return &Error{Field: "previews.domain", Msg: fmt.Sprintf("%q is the zone %q or inside it: previews answer there already (SERVICE.ENV.ZONE)", s.Previews.Domain, zone)}
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
		if field, msg := checkArgs("exec", svc.Exec); msg != "" {
			return fail(field, "%s", msg)
		}
		if field, msg := s.checkArgRefs(svc, "exec", svc.Exec); msg != "" {
			return fail(field, "%s", msg)
		}
		if svc.Package == "" && strings.Contains(svc.Exec[0], "/") && !filepath.IsAbs(svc.Exec[0]) {
			return fail("exec", "relative path %q needs a package", svc.Exec[0])
		}
		if msg := checkInPackage(svc.Package, svc.Exec[0]); msg != "" {
			return fail("exec[0]", "%s", msg)
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
			if n := len(k) + 1 + len(svc.Env[k]) + 1; n > MaxArgString {
				return fail("env."+k, "is %d bytes, more than the %d a variable may have", n-1, MaxArgString-1)
			}
		}
		if svc.Health != nil && svc.Health.Path != "" && !validRequestPath(svc.Health.Path) {
			return fail("health.path", "want a URL path starting with /, not %q", svc.Health.Path)
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
		if field, msg := checkArgs("release", svc.Release); msg != "" {
			return fail(field, "%s", msg)
		}
		if field, msg := s.checkArgRefs(svc, "release", svc.Release); msg != "" {
			return fail(field, "%s", msg)
		}
		if svc.Package == "" && len(svc.Release) > 0 && strings.Contains(svc.Release[0], "/") && !filepath.IsAbs(svc.Release[0]) {
			return fail("release", "relative path %q needs a package", svc.Release[0])
		}
		if len(svc.Release) > 0 {
			if msg := checkInPackage(svc.Package, svc.Release[0]); msg != "" {
				return fail("release[0]", "%s", msg)
			}
		}
		for _, c := range []struct {
			field string
			argv  []string
		}{{"exec", svc.Exec}, {"release", svc.Release}} {
			if n := argSize(c.argv) + envSize(svc.Env); n > MaxArgTotal {
				return fail(c.field, "with env, takes %d bytes, more than the %d a process's arguments and environment may take", n, MaxArgTotal)
			}
		}
		if g := svc.StopGrace.D(); g != 0 && (g < MinGrace || g > MaxGrace) {
			return fail("stop_grace", "%s is outside %s..%s", g, MinGrace, MaxGrace)
		}
		if svc.Health != nil {
			if t := svc.Health.Timeout.D(); t != 0 && (t < MinHealthTimeout || t > MaxHealthTimeout) {
				return fail("health.timeout", "%s is outside %s..%s", t, MinHealthTimeout, MaxHealthTimeout)
			}
			if i := svc.Health.Interval.D(); i != 0 && (i < MinHealthInterval || i > MaxHealthInterval) {
				return fail("health.interval", "%s is outside %s..%s", i, MinHealthInterval, MaxHealthInterval)
			}
			if f := svc.Health.Failures; f != nil && (*f < 1 || *f > MaxHealthFailures) {
				return fail("health.failures", "%d is outside 1..%d", *f, MaxHealthFailures)
			}
			// Without a path nothing is checked once the version is ready.
			if svc.Health.Path == "" && (svc.Health.Interval != 0 || svc.Health.Failures != nil) {
				field := "health.interval"
				if svc.Health.Interval == 0 {
					field = "health.failures"
				}
				return fail(field, "needs health.path: it paces the checks of that path")
			}
		}
		if d := svc.Idle.D(); d != 0 && d < MinIdle {
			return fail("idle", "%s is shorter than %s", d, MinIdle)
		}
		switch svc.OldVersions {
		case "", OldVersionsStop:
		case OldVersionsCallable:
			if svc.Exclusive {
				// A kept version woken beside the current one would be
				// two versions at once.
				return fail("old_versions", "%q cannot be combined with exclusive: an old version woken by its name would run beside the current one", svc.OldVersions)
			}
		default:
			return fail("old_versions", "%q is not one of %q, %q", svc.OldVersions, OldVersionsStop, OldVersionsCallable)
		}
		if field, msg := checkPlacement(svc); msg != "" {
			return fail(field, "%s", msg)
		}
		if svc.Memory != "" {
			if msg := checkMemory(svc.Memory); msg != "" {
				return fail("memory", "%s", msg)
			}
		}
		if svc.CPU != 0 {
			if msg := checkCPU(svc.CPU, strconv.FormatFloat(svc.CPU, 'g', -1, 64)); msg != "" {
				return fail("cpu", "%s", msg)
			}
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
			if inZone(d, zone) {
				return fail("domains", "%q is in the zone %q, which hostel keeps for version names", d, zone)
			}
			if other, ok := hosts[d]; ok {
				return fail("domains", "domain %q is also claimed by %s", d, other)
			}
			hosts[d] = fmt.Sprintf("service %q", name)
		}
		if svc.HSTS && (len(svc.Domains) == 0 || !svc.TLSEnabled()) {
			return fail("hsts", "needs domains served over HTTPS (tls)")
		}
		if len(svc.Redirects) > 0 && len(svc.Domains) == 0 {
			return fail("redirects", "redirects need a domain to redirect to")
		}
		for _, d := range svc.Redirects {
			if !validHost(d) {
				return fail("redirects", "invalid host name %q", d)
			}
			if inZone(d, zone) {
				return fail("redirects", "%q is in the zone %q, which hostel keeps for version names", d, zone)
			}
			if other, ok := hosts[d]; ok {
				return fail("redirects", "redirect %q is also claimed by %s", d, other)
			}
			hosts[d] = fmt.Sprintf("service %q", name)
		}
	}
	if cycle := s.findCycle(); cycle != nil {
		return &Error{Service: cycle[0], Field: "needs", Msg: "dependency cycle: " + strings.Join(cycle, " → ")}
	}
	for _, name := range s.Names() {
		if !s.Services[name].Callable() {
			continue
		}
		// A kept version keeps the versions it needs, transitively: an
		// exclusive one among them, woken by a request to the kept
		// version, would run beside its service's current version.
		if path := s.exclusiveNeed(name, map[string]bool{}); path != nil {
			via := ""
			if len(path) > 1 {
				via = fmt.Sprintf(" (through %q)", strings.Join(path[:len(path)-1], " → "))
			}
			ex := path[len(path)-1]
			return &Error{Service: name, Field: "old_versions", Msg: fmt.Sprintf("%q cannot be combined with a need on exclusive service %q%s: the old version of %q kept with it would run beside the current one", OldVersionsCallable, ex, via, ex)}
		}
	}
	return nil
}

// exclusiveNeed returns the path of needs from service name to the first
// exclusive service it needs, directly or not (in needs order), or nil.
// The needs must be acyclic; seen holds the services already walked.
func (s *Spec) exclusiveNeed(name string, seen map[string]bool) []string {
	for _, n := range s.Services[name].Needs {
		if seen[n] {
			continue
		}
		seen[n] = true
		if s.Services[n].Exclusive {
			return []string{n}
		}
		if path := s.exclusiveNeed(n, seen); path != nil {
			return append([]string{n}, path...)
		}
	}
	return nil
}

// checkPlacement says what is wrong with svc's replicas and placement,
// and in which field, or "": replicas within 1..MaxReplicas, each on a
// node of its own, so never more than one when one node is named, nor
// for an exclusive service (one instance in the whole cluster); node and
// label names a node can have.
func checkPlacement(svc *Service) (field, msg string) {
	if r := svc.Replicas; r != nil {
		switch {
		case *r < 1 || *r > MaxReplicas:
			return "replicas", fmt.Sprintf("%d is outside 1..%d", *r, MaxReplicas)
		case *r > 1 && svc.Exclusive:
			return "replicas", fmt.Sprintf("%d cannot be combined with exclusive: an exclusive service has one instance in the whole cluster", *r)
		case *r > 1 && svc.Placement != nil && svc.Placement.Node != "":
			return "replicas", fmt.Sprintf("%d cannot all run on placement.node %q: replicas run on distinct nodes", *r, svc.Placement.Node)
		}
	}
	p := svc.Placement
	if p == nil {
		return "", ""
	}
	if p.Node != "" {
		if err := CheckNodeName(p.Node); err != nil {
			return "placement.node", err.Error()
		}
	}
	for _, k := range sortedKeys(p.Labels) {
		if err := CheckLabel(k, p.Labels[k]); err != nil {
			if !nodeNameRE.MatchString(k) {
				return "placement.labels", err.Error()
			}
			return "placement.labels." + k, err.Error()
		}
	}
	return "", ""
}

// nodeNameRE is what the name of a node, and a node's label key and
// value, may be: a node's name is a key of the store's records and a host
// name's label; labels are written k=v,… on hostel serve's command line.
var nodeNameRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?$`)

// nameRule says what nodeNameRE allows, for errors.
const nameRule = "want letters, digits, '.', '_' and '-', 63 at most, a letter or digit at each end"

// CheckNodeName says what is wrong with a node's name; nil if nothing.
func CheckNodeName(name string) error {
	if !nodeNameRE.MatchString(name) {
		return fmt.Errorf("%q is not a node name: %s", name, nameRule)
	}
	return nil
}

// CheckLabel says what is wrong with a node's label key=value; nil if
// nothing. Keys and values follow the rule of node names.
func CheckLabel(key, value string) error {
	if !nodeNameRE.MatchString(key) {
		return fmt.Errorf("%q is not a label key: %s", key, nameRule)
	}
	if !nodeNameRE.MatchString(value) {
		return fmt.Errorf("%q is not a label value: %s", value, nameRule)
	}
	return nil
}

// validRequestPath reports whether p can be sent as the path of a GET:
// absolute, parseable, without a fragment, spaces or control characters.
func validRequestPath(p string) bool {
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "# ") {
		return false
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	_, err := url.ParseRequestURI(p)
	return err == nil
}

// inZone reports whether host h is the zone or a name under it: such a
// domain would shadow immutable version names.
func inZone(h, zone string) bool {
	return h == zone || strings.HasSuffix(h, "."+zone)
}

// checkArgs checks the program arguments of field: each must be one valid
// C string the kernel accepts. It returns the element's field and what is
// wrong, or "" when all are well.
func checkArgs(field string, argv []string) (string, string) {
	for i, a := range argv {
		switch {
		case strings.ContainsRune(a, 0):
			return fieldIndex(field, i), "contains a NUL byte"
		case len(a)+1 > MaxArgString:
			return fieldIndex(field, i), fmt.Sprintf("is %d bytes, more than the %d an argument may have", len(a), MaxArgString-1)
		}
	}
	return "", ""
}

// argSize is what argv takes of ARG_MAX: each string with its NUL, and a
// pointer to it.
func argSize(argv []string) int {
	n := 0
	for _, a := range argv {
		n += len(a) + 1 + 8
	}
	return n
}

// envSize is argSize of env's NAME=VALUE strings.
func envSize(env map[string]string) int {
	n := 0
	for k, v := range env {
		n += len(k) + 1 + len(v) + 1 + 8
	}
	return n
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

// checkCPU says what is wrong with a cpu of f, written text, or "": it
// must be a quota a cgroup can express (cgroup.MinCPU..MaxCPU, in steps of
// 0.00001), so that what runs is what the spec says. Zero is not a limit:
// the field left out is.
func checkCPU(f float64, text string) string {
	if !(f >= cgroup.MinCPU && f <= cgroup.MaxCPU) {
		return fmt.Sprintf("%s is outside %v..%v (leave the field out for no limit)", text, cgroup.MinCPU, cgroup.MaxCPU)
	}
	// The shortest decimal that reads back as f is what was written.
	dec := strconv.FormatFloat(f, 'f', -1, 64)
	if _, frac, _ := strings.Cut(dec, "."); len(frac) > cgroup.CPUDecimals {
		return fmt.Sprintf("%s has more than %d decimals: a cgroup quota counts CPUs in steps of 0.%0*d", text, cgroup.CPUDecimals, cgroup.CPUDecimals, 1)
	}
	return ""
}

// checkInPackage says what is wrong with program path prog of a service
// whose package is pkg, or "": a relative path must stay inside the
// package, which the version hashes; "../../bin/sh" would run a program
// that is not part of the version.
func checkInPackage(pkg, prog string) string {
	if pkg == "" || filepath.IsAbs(prog) || filepath.IsLocal(prog) {
		return ""
	}
	return fmt.Sprintf("%q leads out of the package (write an absolute path for a program outside it)", prog)
}

// checkDNSName says what is wrong with h as a DNS suffix (a zone, a
// previews domain), or "": names are made under it, so it may not be an IP
// address, nor end in a label that is a number.
func checkDNSName(h string) string {
	if net.ParseIP(h) != nil {
		return fmt.Sprintf("%q is an IP address, not a DNS name such as %q", h, DefaultZone)
	}
	if !validHost(h) {
		return fmt.Sprintf("invalid host name %q", h)
	}
	last := h[strings.LastIndexByte(h, '.')+1:]
	if strings.Trim(last, "0123456789") == "" {
		return fmt.Sprintf("%q ends in a number, which no DNS name does (want a name such as %q)", h, DefaultZone)
	}
	return ""
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

// validate checks the previews section; nil is the defaults.
func (p *Previews) validate() error {
	if p == nil {
		return nil
	}
	if p.Domain != "" {
		if msg := checkDNSName(p.Domain); msg != "" {
			return &Error{Field: "previews.domain", Msg: msg}
		}
	}
	if d := p.Idle.D(); d != 0 && d < MinIdle {
		return &Error{Field: "previews.idle", Msg: fmt.Sprintf("%s is shorter than %s", d, MinIdle)}
	}
	for _, f := range []struct{ field, v string }{{"previews.postgres", p.Postgres}, {"previews.state", p.State}} {
		if f.v != "" && f.v != PreviewCopy && f.v != PreviewEmpty {
			return &Error{Field: f.field, Msg: fmt.Sprintf("want %q or %q, not %q", PreviewCopy, PreviewEmpty, f.v)}
		}
	}
	return nil
}
