package spec

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"hostel/internal/cgroup"
)

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"unknown top field", `{"services":{},"servics":{}}`, `hostel.json: unknown field "servics"`},
		{"unknown service field", `{"services":{"api":{"exec":["/a"],"enviroment":{}}}}`, `hostel.json: service "api": unknown field "enviroment"`},
		{"bad duration", `{"services":{"api":{"exec":["/a"],"stop_grace":"3x"}}}`, `hostel.json: service "api": stop_grace: invalid duration "3x"`},
		{"bad health timeout", `{"services":{"api":{"exec":["/a"],"health":{"timeout":"soon"}}}}`, `hostel.json: service "api": health.timeout: invalid duration "soon"`},
		{"bad name", `{"services":{"Api":{"exec":["/a"]}}}`, `hostel.json: service "Api": invalid service name`},
		{"missing need", `{"services":{"api":{"exec":["/a"],"needs":["db2"]}}}`, `hostel.json: service "api": needs "db2", which is not defined`},
		{"cycle", `{"services":{"a":{"exec":["/a"],"needs":["b"]},"b":{"exec":["/b"],"needs":["a"]}}}`, `hostel.json: service "a": needs: dependency cycle: a → b → a`},
		{"self need", `{"services":{"a":{"exec":["/a"],"needs":["a"]}}}`, `service "a": needs itself`},
		{"duplicate domain", `{"services":{"a":{"exec":["/a"],"domains":["x.org"]},"b":{"exec":["/b"],"domains":["x.org"]}}}`, `service "b": domains: domain "x.org" is also claimed by service "a"`},
		{"redirect is a domain", `{"services":{"a":{"exec":["/a"],"domains":["x.org","y.org"],"redirects":["y.org"]}}}`, `service "a": redirects: redirect "y.org" is also claimed by service "a"`},
		{"redirect without domain", `{"services":{"a":{"exec":["/a"],"redirects":["y.org"]}}}`, `redirects need a domain`},
		{"no exec", `{"services":{"a":{}}}`, `service "a": exec: must name a program`},
		{"wrong type", `{"services":{"a":{"exec":"/a"}}}`, `hostel.json: service "a": exec: want a list of strings, not a string`},
		{"reserved env", `{"services":{"a":{"exec":["/a"],"env":{"PORT":"1"}}}}`, `service "a": env.PORT: is set by hostel`},
		{"relative package", `{"services":{"a":{"package":"pkg","exec":["bin/a"]}}}`, `package: want an absolute path`},
		{"bad memory", `{"services":{"a":{"exec":["/a"],"memory":"lots"}}}`, `memory: invalid size "lots"`},
		{"trailing data", `{"services":{}} {}`, `hostel.json: invalid JSON at line 1, column 17: trailing data after the JSON value`},
		{"not json", `services:`, `hostel.json: invalid JSON at line 1, column 1: invalid character 's' looking for beginning of value`},
		{"domain in zone", `{"services":{"a":{"exec":["/a"],"domains":["x.hostel.internal"]}}}`, `is in the zone`},
		{"postgres false", `{"services":{"a":{"exec":["/a"],"postgres":false}}}`, `service "a": postgres: want true or an object`},
		{"shared database", `{"services":{"a":{"exec":["/a"],"postgres":{"database":"x"}},"b":{"exec":["/b"],"postgres":{"database":"x"}}}}`, `database "x" is also used by service "a"`},
		// Sizes past Linux's exec limits, too big for the corpus files.
		{"1 MB env value", `{"services":{"a":{"exec":["/a"],"env":{"BIG":"` + strings.Repeat("x", 1<<20) + `"}}}}`, `hostel.json: service "a": env.BIG: is 1048580 bytes, more than the 131071 a variable may have`},
		{"long argument", `{"services":{"a":{"exec":["/a","` + strings.Repeat("x", MaxArgString) + `"]}}}`, `hostel.json: service "a": exec[1]: is 131072 bytes, more than the 131071 an argument may have`},
		{"long release argument", `{"services":{"a":{"exec":["/a"],"release":["/a","` + strings.Repeat("x", MaxArgString) + `"]}}}`, `hostel.json: service "a": release[1]: is 131072 bytes`},
		{"environment too large", `{"services":{"a":{"exec":["/a"],"env":{` + manyVars(10, 120<<10) + `}}}}`, `hostel.json: service "a": exec: with env, takes 1228931 bytes, more than the 1048576`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode("hostel.json", []byte(tt.in))
			if err == nil {
				t.Fatalf("got no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %q, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
}

// manyVars writes n JSON members V0…, each with a value of size bytes.
func manyVars(n, size int) string {
	vars := make([]string, n)
	for i := range vars {
		vars[i] = fmt.Sprintf(`"V%d":"%s"`, i, strings.Repeat("x", size))
	}
	return strings.Join(vars, ",")
}

func TestDecodeFull(t *testing.T) {
	in := `{"zone":"z.test","services":{"api":{"exec":["/a"],"postgres":true,"health":{"path":"/h","timeout":"5s","interval":"2s","failures":5},"stop_grace":"2s","memory":"512M","cpu":0.5},
	"web":{"exec":["/w"],"needs":["api"],"domains":["web.org"],"redirects":["www.web.org"],"idle":"15m","tls":false}}}`
	s, err := Decode("hostel.json", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Services["api"].Postgres.Name("api"); got != "api" {
		t.Errorf("postgres true: database %q, want api", got)
	}
	if got := s.Services["api"].HealthTimeout().String(); got != "5s" {
		t.Errorf("health timeout %s", got)
	}
	api, web := s.Services["api"], s.Services["web"]
	if api.HealthInterval() != 2*time.Second || api.HealthFailures() != 5 {
		t.Errorf("health interval %s, failures %d; want 2s, 5", api.HealthInterval(), api.HealthFailures())
	}
	if web.HealthInterval() != DefaultHealthInterval || web.HealthFailures() != DefaultHealthFailures {
		t.Errorf("defaults: health interval %s, failures %d", web.HealthInterval(), web.HealthFailures())
	}
	if s.Services["web"].TLSEnabled() || !s.Services["api"].TLSEnabled() {
		t.Error("tls defaults wrong")
	}
	// The canonical form decodes back to the same versions.
	b, _ := json.Marshal(s)
	s2, err := Decode("canon.json", b)
	if err != nil {
		t.Fatalf("canonical form does not decode: %v\n%s", err, b)
	}
	v1, _ := Versions(s, Inputs{})
	v2, _ := Versions(s2, Inputs{})
	if v1["web"] != v2["web"] || v1["api"] != v2["api"] {
		t.Errorf("versions differ after round trip: %v %v", v1, v2)
	}
}

func TestVersions(t *testing.T) {
	base := `{"services":{"api":{"exec":["/a"],"env":{"G":"%s"}},"web":{"exec":["/w"],"needs":["api"],"domains":["%s"]},"blog":{"exec":["/b"]}}}`
	decode := func(g, domain string) map[string]Version {
		t.Helper()
		s, err := Decode("x", []byte(strings.NewReplacer("%s", g).Replace(base[:strings.Index(base, `"domains"`)])+`"domains":["`+domain+`"]},"blog":{"exec":["/b"]}}}`))
		if err != nil {
			t.Fatal(err)
		}
		v, err := Versions(s, Inputs{})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	a := decode("hello", "web.org")
	b := decode("howdy", "web.org")
	c := decode("hello", "other.org")
	if a["api"] == b["api"] || a["web"] == b["web"] {
		t.Errorf("env change must change api and its dependent web: %v %v", a, b)
	}
	if a["blog"] != b["blog"] {
		t.Errorf("env change of api changed unrelated blog")
	}
	if a["web"] != c["web"] {
		t.Errorf("a domain change changed web's version")
	}
	for _, v := range a {
		if len(v) != 12 {
			t.Errorf("version %q is not 12 hex digits", v)
		}
	}
}

// TestPlacementOutOfVersion: replicas and placement say where and how
// many times a version runs, not what it is: they change no version, the
// service's nor its dependents'. memory and cpu, also placement requests
// in cluster mode, are limits the process runs under: they do.
func TestPlacementOutOfVersion(t *testing.T) {
	versions := func(api string) map[string]Version {
		t.Helper()
		s, err := Decode("hostel.json", []byte(`{"services":{"api":{"exec":["/a"]`+api+`},"web":{"exec":["/w"],"needs":["api"]}}}`))
		if err != nil {
			t.Fatal(err)
		}
		v, err := Versions(s, Inputs{})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	base := versions("")
	for _, tt := range []struct {
		api  string
		same bool
	}{
		{`,"replicas":3`, true},
		{`,"replicas":1`, true},
		{`,"placement":{"labels":{"zone":"eu","disk":"ssd"}}`, true},
		{`,"placement":{"node":"node-a"}`, true},
		{`,"replicas":2,"placement":{"labels":{"zone":"eu"}}`, true},
		{`,"memory":"512M"`, false},
		{`,"cpu":0.5`, false},
	} {
		got := versions(tt.api)
		if same := got["api"] == base["api"] && got["web"] == base["web"]; same != tt.same {
			t.Errorf("%s: versions %v, without it %v: same %v, want %v", tt.api, got, base, same, tt.same)
		}
	}
}

// TestDecodePlacement: replicas and placement decode as written; replicas
// default to 1.
func TestDecodePlacement(t *testing.T) {
	s, err := Decode("hostel.json", []byte(`{"services":{
		"api":{"exec":["/a"],"replicas":3,"placement":{"labels":{"zone":"eu","disk":"ssd"}},"memory":"512M","cpu":0.5},
		"db":{"exec":["/d"],"exclusive":true,"replicas":1,"placement":{"node":"node-a.example"}},
		"web":{"exec":["/w"]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	api, db, web := s.Services["api"], s.Services["db"], s.Services["web"]
	if api.ReplicasOrDefault() != 3 || db.ReplicasOrDefault() != 1 || web.ReplicasOrDefault() != 1 {
		t.Errorf("replicas %d, %d, %d; want 3, 1, 1", api.ReplicasOrDefault(), db.ReplicasOrDefault(), web.ReplicasOrDefault())
	}
	if want := (&Placement{Labels: map[string]string{"zone": "eu", "disk": "ssd"}}); !reflect.DeepEqual(api.Placement, want) {
		t.Errorf("api placement %+v, want %+v", api.Placement, want)
	}
	if db.Placement == nil || db.Placement.Node != "node-a.example" || web.Placement != nil {
		t.Errorf("placements: db %+v, web %+v", db.Placement, web.Placement)
	}
}

func TestVersionHost(t *testing.T) {
	h := VersionHost("my-api", "3f2a9c1b7d04", "hostel.internal")
	if h != "my-api-3f2a9c1b7d04.hostel.internal" {
		t.Fatal(h)
	}
	svc, v, ok := ParseVersionHost(h, "hostel.internal")
	if !ok || svc != "my-api" || v != "3f2a9c1b7d04" {
		t.Fatalf("ParseVersionHost = %q %q %v", svc, v, ok)
	}
	for _, bad := range []string{"api.hostel.internal", "api-123.hostel.internal", "api-3f2a9c1b7d04.other", "-3f2a9c1b7d04.hostel.internal"} {
		if _, _, ok := ParseVersionHost(bad, "hostel.internal"); ok {
			t.Errorf("ParseVersionHost(%q) ok", bad)
		}
	}
}

// FuzzDecode checks that decoding never panics, that every error is one
// line in user words (no Go type name), that what decodes holds only
// limits a cgroup can enforce as written, and that it re-encodes to a
// canonical form with the same versions.
func FuzzDecode(f *testing.F) {
	f.Add(`{"services":{"a":{"exec":["x"],"env":{"A":"1"},"needs":["b"]},"b":{"exec":["y"],"domains":["b.org"]}}}`)
	f.Add(`{"zone":"z","services":{"a":{"exec":["x"],"postgres":{"database":"d"},"health":{"path":"/h","timeout":"1s"}}}}`)
	f.Add(`{"services":{"a":{"exec":["x"],"stop_grace":"1s","idle":"2m","tls":false,"redirects":["w.a.org"],"domains":["a.org"]}}}`)
	f.Add(`{"services":{"a":{"exec":["x"],"cpu":0.29,"memory":"64M"},"b":{"exec":["y"],"cpu":175921860,"memory":"1048576"}}}`)
	f.Add(`{"services":{"a":{"package":"/p","exec":["bin/../x"],"release":["./m"],"postgres":true}}}`)
	f.Add(`{"previews":{"domain":"p.example","idle":"1m","ttl":"2h","postgres":"empty"},"services":{"a":{"exec":["x"],"cpu":null,"memory":null}}}`)
	f.Add(`{"services":{"a":{"exec":["x"],"replicas":3,"placement":{"labels":{"zone":"eu"}},"memory":"1G"},"b":{"exec":["y"],"exclusive":true,"placement":{"node":"n1"}}}}`)
	f.Add(`[]`)
	for _, c := range readCorpus(f, "testdata/bad") {
		f.Add(c[0])
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := Decode("f.json", []byte(in))
		if err != nil {
			checkUserWords(t, err)
			return
		}
		for name, svc := range s.Services {
			if svc.CPU != 0 && (svc.CPU < cgroup.MinCPU || svc.CPU > cgroup.MaxCPU || cgroupQuota(svc.CPU) != svc.CPU) {
				t.Fatalf("service %q: cpu %v accepted, which a cgroup quota does not hold as written", name, svc.CPU)
			}
			if m, err := ParseMemory(svc.Memory); err != nil || (svc.Memory != "" && m < MinMemory) {
				t.Fatalf("service %q: memory %q accepted: %d, %v", name, svc.Memory, m, err)
			}
		}
		v1, err := Versions(s, Inputs{})
		if err != nil {
			t.Fatalf("versions of a valid spec: %v", err)
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		s2, err := Decode("canon.json", b)
		if err != nil {
			t.Fatalf("canonical form %s does not decode: %v", b, err)
		}
		v2, _ := Versions(s2, Inputs{})
		for n := range v1 {
			if v1[n] != v2[n] {
				t.Fatalf("service %q: version changed across canonical round trip", n)
			}
		}
	})
}

// cgroupQuota is cpu as a cgroup quota holds it: whole microseconds of a
// 100 ms period, back in CPUs.
func cgroupQuota(cpu float64) float64 { return math.Round(cpu*1e5) / 1e5 }

// goWords are Go's names for types and packages, which a user who writes
// a spec has no reason to know.
var goWords = regexp.MustCompile(`map\[|\[\]|\bspec\.|\bjson\.|jsontext|reflect|RawMessage|float64|int64|\bGo\b|\bplain\b`)

// quoted is a string as %q writes it: a value from the spec, echoed.
var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// checkUserWords fails t unless err is one line that names no Go type.
func checkUserWords(t testing.TB, err error) {
	t.Helper()
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Fatalf("multi-line error: %q", msg)
	}
	if w := goWords.FindString(quoted.ReplaceAllString(msg, `""`)); w != "" {
		t.Fatalf("error %q is in Go's words (%q), not the spec's", msg, w)
	}
}

// TestDecodeErrorsInUserWords walks every field of the spec, at any depth,
// with a value of every JSON kind: each error is one line, in user words,
// and names the field it is about.
func TestDecodeErrorsInUserWords(t *testing.T) {
	values := []string{`null`, `true`, `false`, `0`, `-1`, `1.5`, `1e400`, `1e-400`, `""`, `"x"`, `[]`, `[1]`, `[""]`, `{}`, `{"x":1}`, `{"x":"y"}`}
	var walk func(typ reflect.Type, path []string)
	n := 0
	walk = func(typ reflect.Type, path []string) {
		for typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct {
			return
		}
		for i := range typ.NumField() {
			name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			fpath := append(append([]string(nil), path...), name)
			for _, v := range values {
				in := nest(fpath, v)
				_, err := Decode("h.json", []byte(in))
				n++
				if err == nil {
					continue
				}
				checkUserWords(t, err)
				// A value in services is a service, named as such.
				named := len(fpath) == 1 && name == "services" && strings.Contains(err.Error(), `service "x"`)
				if want := fieldWords(fpath); !strings.Contains(err.Error(), want) && !named {
					t.Errorf("%s: error %q does not name %s", in, err, want)
				}
			}
			ft := typ.Field(i).Type
			if name == "services" {
				walk(reflect.TypeFor[Service](), []string{"services", "a"})
			} else {
				walk(ft, fpath)
			}
		}
	}
	walk(reflect.TypeFor[Spec](), nil)
	if n < 300 {
		t.Fatalf("walked %d cases: the walk missed the fields", n)
	}
}

// nest is a spec that sets the field at path to the JSON value v, inside
// a valid service "a" when the path is in one.
func nest(path []string, v string) string {
	for i := len(path) - 1; i >= 0; i-- {
		if i == 1 && path[0] == "services" && path[2] != "exec" {
			v = `{"exec":["/bin/true"],` + v[1:] // v is {"FIELD":…}
		}
		v = fmt.Sprintf(`{%q:%s}`, path[i], v)
	}
	return v
}

// fieldWords is how an error names the field at path: service "a": exec.
func fieldWords(path []string) string {
	if len(path) >= 3 && path[0] == "services" {
		return fmt.Sprintf("service %q: %s", path[1], strings.Join(path[2:], "."))
	}
	return strings.Join(path, ".")
}

// BenchmarkDecode measures decoding a spec of 50 services.
func BenchmarkDecode(b *testing.B) {
	var svcs []string
	for i := range 50 {
		svcs = append(svcs, fmt.Sprintf(`"s%d":{"exec":["/bin/s%d","--port","x"],"env":{"A":"1","B":"two","LOG_LEVEL":"info"},"health":{"path":"/healthz","timeout":"20s"},"domains":["s%d.example.org"],"stop_grace":"5s"}`, i, i, i))
	}
	data := []byte(`{"zone":"z.example","services":{` + strings.Join(svcs, ",") + `}}`)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Decode("hostel.json", data); err != nil {
			b.Fatal(err)
		}
	}
}

// TestInstanceKey: production's instance of a version is its immutable
// key; a preview's own is SERVICE-VERSION@ENV; a key tells its service,
// version and owner back.
func TestInstanceKey(t *testing.T) {
	tests := []struct {
		service, owner string
		want           VersionKey
		wantOwner      string
	}{
		{"api", "", "api-111111111111", DefaultEnv},
		{"api", DefaultEnv, "api-111111111111", DefaultEnv},
		{"my-api", "pr-1", "my-api-111111111111@pr-1", "pr-1"},
	}
	for _, tt := range tests {
		k := InstanceKey(tt.service, "111111111111", tt.owner)
		if k != tt.want || k.Owner() != tt.wantOwner || k.Service() != tt.service || k.Version() != Key(tt.service, "111111111111") {
			t.Errorf("InstanceKey(%q, v, %q) = %q (service %q, owner %q, version %q), want %q", tt.service, tt.owner, k, k.Service(), k.Owner(), k.Version(), tt.want)
		}
	}
}
