// Package spec is hostel's vocabulary: the spec a team writes, its strict
// decoding and validation, and the versions (hashes) that identify what runs.
package spec

import (
	stdjson "encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// DefaultZone is the zone of immutable version names when the spec sets none.
const DefaultZone = "hostel.internal"

// Spec is a whole deployment: every service of the machine.
type Spec struct {
	// Zone is the DNS suffix of immutable version names; empty means DefaultZone.
	Zone string `json:"zone,omitempty"`
	// ACME configures automatic certificates; nil means none are requested.
	ACME *ACME `json:"acme,omitempty"`
	// Postgres says how hostel reaches the database server as administrator.
	Postgres *PostgresAdmin `json:"postgres,omitempty"`
	// Previews says how preview environments (deploy --env NAME) run;
	// nil means the defaults (see Previews).
	Previews *Previews `json:"previews,omitempty"`
	// Services by name.
	Services map[string]*Service `json:"services"`
}

// Previews configures preview environments.
type Previews struct {
	// Domain, when set, makes every service of environment NAME answer on
	// SERVICE.NAME.DOMAIN (PreviewHost), publicly, with a certificate like
	// any domain; empty means previews answer on SERVICE.NAME.ZONE only.
	Domain string `json:"domain,omitempty"`
	// Idle puts a preview's own instances to sleep (scale to zero) after
	// this long without a request; zero means DefaultPreviewIdle. A
	// service's own shorter idle still applies.
	Idle Duration `json:"idle,omitempty"`
	// TTL is how long a preview lives after its last deploy; zero means
	// DefaultPreviewTTL.
	TTL Duration `json:"ttl,omitempty"`
	// Postgres is what a preview's own database starts as: PreviewCopy
	// (the default: production's rows at the preview's first deploy) or
	// PreviewEmpty.
	Postgres string `json:"postgres,omitempty"`
	// State is what a preview's own state directory starts as:
	// PreviewEmpty (the default) or PreviewCopy of production's.
	State string `json:"state,omitempty"`
}

// What a preview's own data starts as (Previews.Postgres, Previews.State).
const (
	PreviewCopy  = "copy"
	PreviewEmpty = "empty"
)

// DefaultPreviewTTL is how long a preview lives after its last deploy
// when previews.ttl is not set.
const DefaultPreviewTTL = 168 * time.Hour

// DefaultPreviewIdle is how long a preview's own instance runs without a
// request before it sleeps, when previews.idle is not set.
const DefaultPreviewIdle = 10 * time.Minute

// PreviewIdle returns how long a preview's own instance of s runs without
// a request before it sleeps.
func (s *Spec) PreviewIdle() time.Duration {
	if s.Previews == nil || s.Previews.Idle == 0 {
		return DefaultPreviewIdle
	}
	return s.Previews.Idle.D()
}

// PreviewHost returns the public name of service in preview environment
// env, SERVICE.ENV.DOMAIN; "" when previews.domain is not set.
func (s *Spec) PreviewHost(service, env string) string {
	if s.Previews == nil || s.Previews.Domain == "" {
		return ""
	}
	return service + "." + env + "." + s.Previews.Domain
}

// TTLOrDefault returns how long a preview of s lives after its last deploy.
func (s *Spec) TTLOrDefault() time.Duration {
	if s.Previews == nil || s.Previews.TTL == 0 {
		return DefaultPreviewTTL
	}
	return s.Previews.TTL.D()
}

// PreviewData returns what a preview's own database and state directory
// start as.
func (s *Spec) PreviewData() (postgres, state string) {
	postgres, state = PreviewCopy, PreviewEmpty
	if p := s.Previews; p != nil {
		if p.Postgres != "" {
			postgres = p.Postgres
		}
		if p.State != "" {
			state = p.State
		}
	}
	return postgres, state
}

// ACME names the certificate authority hostel asks for certificates.
type ACME struct {
	Email  string `json:"email,omitempty"`
	CA     string `json:"ca,omitempty"`
	CARoot string `json:"ca_root,omitempty"`
}

// PostgresAdmin is the top-level postgres block.
type PostgresAdmin struct {
	// Admin is a libpq conninfo or URL; empty means the local socket as postgres.
	Admin string `json:"admin,omitempty"`
}

// Service is one program hostel runs.
type Service struct {
	// Package is a Nix store path or an absolute directory; empty means exec runs as given.
	Package string            `json:"package,omitempty"`
	Exec    []string          `json:"exec"`
	Env     map[string]string `json:"env,omitempty"`
	Health  *Health           `json:"health,omitempty"`
	// Postgres asks for a database; nil means none.
	Postgres  *Database `json:"postgres,omitempty"`
	Secrets   []string  `json:"secrets,omitempty"`
	Release   []string  `json:"release,omitempty"`
	StopGrace Duration  `json:"stop_grace,omitempty"`
	Memory    string    `json:"memory,omitempty"`
	CPU       float64   `json:"cpu,omitempty"`
	Needs     []string  `json:"needs,omitempty"`
	Domains   []string  `json:"domains,omitempty"`
	Redirects []string  `json:"redirects,omitempty"`
	// Idle stops the service after this long without a request; zero means always running.
	Idle Duration `json:"idle,omitempty"`
	// OldVersions is what becomes of a version a deploy replaces:
	// "stop" (or empty) stops it once drained; "callable" keeps it
	// asleep, woken by a request to its immutable name, until gc drops
	// the last generation that holds it (Callable).
	OldVersions string `json:"old_versions,omitempty"`
	// Exclusive never runs two versions at once: a deploy holds the
	// service's requests, stops the old version, starts the new one and
	// releases them (single-writer apps).
	Exclusive bool `json:"exclusive,omitempty"`
	// Replicas is how many instances of the service run in cluster mode,
	// each on its own node; nil means 1. A pointer, so that a 0 written
	// out is told from an absent field and refused.
	Replicas *int `json:"replicas,omitempty"`
	// Placement constrains the nodes its instances run on in cluster
	// mode; nil means any node.
	Placement *Placement `json:"placement,omitempty"`
	// TLS, nil meaning true, serves the domains over HTTPS.
	TLS  *bool `json:"tls,omitempty"`
	HSTS bool  `json:"hsts,omitempty"`
}

// Placement says on which nodes a service's instances may run (cluster
// mode). Memory and CPU, the service's limits, are also what it requests
// of a node's capacity there.
type Placement struct {
	// Labels are what a node must be labelled with (hostel serve
	// --labels), every one; nil means any node.
	Labels map[string]string `json:"labels,omitempty"`
	// Node pins the service to the node of that name (hostel serve
	// --node); empty means any node.
	Node string `json:"node,omitempty"`
}

// ReplicasOrDefault is how many instances of the service run in cluster
// mode.
func (s *Service) ReplicasOrDefault() int {
	if s.Replicas != nil {
		return *s.Replicas
	}
	return 1
}

// Health is the readiness and liveness check of a service.
type Health struct {
	// Path is requested with GET on PORT; 2xx means healthy.
	Path string `json:"path,omitempty"`
	// Timeout bounds how long a new version may take to become ready; zero means 30s.
	Timeout Duration `json:"timeout,omitempty"`
	// Interval is how often a ready version is checked again at Path;
	// zero means 10s.
	Interval Duration `json:"interval,omitempty"`
	// Failures is how many failed checks in a row make a ready version
	// unhealthy; nil means 3. A pointer, so that a 0 written out is told
	// from an absent field and refused rather than read as the default.
	Failures *int `json:"failures,omitempty"`
}

// Database is a service's own PostgreSQL database.
type Database struct {
	// Database is the database name; empty means the service's name.
	Database string `json:"database,omitempty"`
}

// UnmarshalJSONFrom accepts true or an object; false, which would read as
// no database, is refused (leave the field out for none).
func (d *Database) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	switch dec.PeekKind() {
	case 't':
		if _, err := dec.ReadToken(); err != nil {
			return err
		}
		*d = Database{}
		return nil
	case '{':
		// Decoded on dec, with its options: an unknown field and a value
		// of the wrong kind are named by their place in the whole spec.
		type plain Database
		return json.UnmarshalDecode(dec, (*plain)(d))
	}
	return &Error{Msg: "want true or an object"}
}

// UnmarshalJSON is UnmarshalJSONFrom, for encoding/json.
func (d *Database) UnmarshalJSON(b []byte) error {
	return json.Unmarshal(b, d, decodeOptions)
}

// Name returns the database name for service svc.
func (d *Database) Name(svc string) string {
	if d.Database != "" {
		return d.Database
	}
	return svc
}

// Duration is a time.Duration written in Go syntax ("30s", "15m").
type Duration time.Duration

// MarshalJSON writes the duration in Go syntax.
func (d Duration) MarshalJSON() ([]byte, error) {
	return stdjson.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a Go duration string; null leaves d as it is (the
// field left out).
func (d *Duration) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var s string
	if err := stdjson.Unmarshal(b, &s); err != nil {
		return &Error{Msg: "want a duration string such as \"30s\", not " + kindWords(jsontext.Value(b).Kind())}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return &Error{Msg: fmt.Sprintf("invalid duration %q", s)}
	}
	if v < 0 {
		return &Error{Msg: fmt.Sprintf("negative duration %q", s)}
	}
	// Zero is what an absent field means; written out, it would be read as
	// "none" or "at once", and silently get the default instead.
	if v == 0 {
		return &Error{Msg: fmt.Sprintf("duration %q must be more than 0 (leave the field out for the default)", s)}
	}
	*d = Duration(v)
	return nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// ZoneOrDefault returns the zone of immutable names.
func (s *Spec) ZoneOrDefault() string {
	if s.Zone == "" {
		return DefaultZone
	}
	return s.Zone
}

// Names returns the service names, sorted.
func (s *Spec) Names() []string {
	names := make([]string, 0, len(s.Services))
	for n := range s.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// TLSEnabled reports whether the service's domains are served over HTTPS.
func (s *Service) TLSEnabled() bool { return s.TLS == nil || *s.TLS }

// HealthTimeout is how long a new version may take to become ready.
func (s *Service) HealthTimeout() time.Duration {
	if s.Health != nil && s.Health.Timeout > 0 {
		return s.Health.Timeout.D()
	}
	return 30 * time.Second
}

// Defaults of the health checks that go on once a version is ready.
const (
	DefaultHealthInterval = 10 * time.Second
	DefaultHealthFailures = 3
)

// HealthInterval is how often a ready version with a health path is
// checked again.
func (s *Service) HealthInterval() time.Duration {
	if s.Health != nil && s.Health.Interval > 0 {
		return s.Health.Interval.D()
	}
	return DefaultHealthInterval
}

// HealthFailures is how many failed checks in a row make a ready version
// unhealthy.
func (s *Service) HealthFailures() int {
	if s.Health != nil && s.Health.Failures != nil {
		return *s.Health.Failures
	}
	return DefaultHealthFailures
}

// StopGraceOrDefault is how long a stopping process has between SIGTERM and SIGKILL.
func (s *Service) StopGraceOrDefault() time.Duration {
	if s.StopGrace > 0 {
		return s.StopGrace.D()
	}
	return 10 * time.Second
}

// EnvName is the environment variable through which a dependent reaches need.
func EnvName(need string) string {
	return strings.ToUpper(strings.ReplaceAll(need, "-", "_")) + "_URL"
}

// MinMemory is the least memory a service may be given: under a MiB its
// processes would be killed as they start.
const MinMemory = 1 << 20

// ParseMemory reads "512M", "2G", "1048576" into bytes. It reads whatever
// a stored generation may hold, also one a spec of an older hostel let
// through ("+512M", "4096"): Validate says what a spec may hold now.
func ParseMemory(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	num := s
	switch s[len(s)-1] {
	case 'K', 'k':
		mult, num = 1<<10, s[:len(s)-1]
	case 'M', 'm':
		mult, num = 1<<20, s[:len(s)-1]
	case 'G', 'g':
		mult, num = 1<<30, s[:len(s)-1]
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid size %q (want e.g. \"512M\")", s)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * mult, nil
}

// checkMemory says what is wrong with a memory of s, or "": digits, then
// K, M or G (powers of 1024) or nothing (bytes), that ParseMemory reads,
// at least MinMemory.
func checkMemory(s string) string {
	n, err := ParseMemory(s)
	switch num := strings.TrimRight(s, "KkMmGg"); {
	case num == "" || len(s)-len(num) > 1 || strings.Trim(num, "0123456789") != "":
		return fmt.Sprintf("invalid size %q (want e.g. \"512M\")", s)
	case err != nil:
		return err.Error()
	case n < MinMemory:
		return fmt.Sprintf("%q is less than the least a service may have, 1M", s)
	}
	return ""
}

// Callable reports whether a version of the service that a deploy
// replaces stays callable by its immutable name (old_versions "callable").
func (s *Service) Callable() bool { return s.OldVersions == OldVersionsCallable }
