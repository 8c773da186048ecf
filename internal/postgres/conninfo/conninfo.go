// Package conninfo reads the administrator's PostgreSQL connection settings
// (the spec's postgres.admin, a libpq keyword/value conninfo or a
// postgres:// URL) without a database driver: what hostel checks of them
// when it validates a spec, and the ssl* parameters it passes on to tools
// and services. Package postgres, which connects, takes the rule from here,
// so that it is written once and a spec check never pulls in pgx.
package conninfo

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
)

// TLS is how connections to the server are secured: libpq's ssl*
// connection parameters as the administrator gave them in postgres.admin
// (or, like libpq, in the daemon's PGSSL* environment). hostel's own
// connections, pg_dump, pg_restore and psql use all of them; services get
// the ones that describe the server (sslmode, sslrootcert, sslsni) but
// never the administrator's client certificate.
//
// The mode is always said explicitly to services: a URL without sslmode
// means "prefer" to libpq and pgx but "require" to lib/pq and node-postgres,
// which then fail against a server with ssl = off.
type TLS struct {
	// Mode is libpq's sslmode; "prefer" (libpq's default) when unset.
	Mode string
	// RootCert is sslrootcert: the CA certificates that verify the
	// server (verify-ca, verify-full); "" for none. Services must be able
	// to read the file.
	RootCert string
	// SNI is sslsni ("0" or "1"); "" leaves libpq's default (on).
	SNI string
	// Cert and Key are sslcert and sslkey: the administrator's client
	// certificate. Only the daemon and its tools use them.
	Cert, Key string
}

// tlsParam is one ssl* connection parameter hostel carries.
type tlsParam struct {
	key string // libpq keyword
	env string // libpq environment variable
	// service: a service gets it too (it describes the server, not the
	// administrator's identity).
	service bool
	field   func(*TLS) *string
}

// tlsParams lists, in one place, the ssl* parameters hostel passes on and
// to whom. Every other ssl* parameter is refused: pgx (hostel's own
// connections) would send it to the server as a setting, or pg_dump 15
// would not know it, so accepting it would mean ignoring it somewhere.
var tlsParams = []tlsParam{
	{"sslmode", "PGSSLMODE", true, func(t *TLS) *string { return &t.Mode }},
	{"sslrootcert", "PGSSLROOTCERT", true, func(t *TLS) *string { return &t.RootCert }},
	{"sslsni", "PGSSLSNI", true, func(t *TLS) *string { return &t.SNI }},
	{"sslcert", "PGSSLCERT", false, func(t *TLS) *string { return &t.Cert }},
	{"sslkey", "PGSSLKEY", false, func(t *TLS) *string { return &t.Key }},
}

// ErrUnsupportedParam is returned by Check and ParseTLS (and so by
// postgres.Open) for a connection parameter hostel cannot honour on every path to the server.
var ErrUnsupportedParam = errors.New("connection parameter not supported")

// sslModes are libpq's sslmode values.
var sslModes = map[string]bool{"disable": true, "allow": true, "prefer": true, "require": true, "verify-ca": true, "verify-full": true}

// Check checks what can be checked of an administrator conninfo or
// URL without the machine it will be used on: its syntax, and that its
// ssl* parameters are ones hostel passes on, with a valid sslmode. Its
// errors never quote the conninfo, which may hold a password.
func Check(conninfo string) error {
	params, err := parameters(conninfo)
	if err != nil {
		return err
	}
	return checkTLSParams(params)
}

// checkTLSParams refuses ssl* parameters hostel does not pass on and an
// sslmode libpq does not know.
func checkTLSParams(params map[string]string) error {
	var unsupported []string
	for k := range params {
		if (strings.HasPrefix(k, "ssl") || k == "requiressl") && !slices.ContainsFunc(tlsParams, func(p tlsParam) bool { return p.key == k }) {
			unsupported = append(unsupported, k)
		}
	}
	if len(unsupported) > 0 {
		sort.Strings(unsupported)
		return fmt.Errorf("%s: %w (hostel supports %s)", strings.Join(unsupported, ", "), ErrUnsupportedParam, supportedTLSKeys())
	}
	if m, ok := params["sslmode"]; ok {
		return checkMode(m)
	}
	return nil
}

func checkMode(m string) error {
	if !sslModes[m] {
		return fmt.Errorf("sslmode %q: want disable, allow, prefer, require, verify-ca or verify-full", m)
	}
	return nil
}

// ParseTLS reads the ssl* parameters of a conninfo or URL, falling back to
// the PGSSL* environment variables as libpq (and pgx) do.
func ParseTLS(conninfo string) (TLS, error) {
	params, err := parameters(conninfo)
	if err != nil {
		return TLS{}, err
	}
	if err := checkTLSParams(params); err != nil {
		return TLS{}, err
	}
	var t TLS
	for _, p := range tlsParams {
		v, ok := params[p.key]
		if !ok {
			v = os.Getenv(p.env)
		}
		*p.field(&t) = v
	}
	if t.Mode == "" {
		t.Mode = "prefer"
	}
	if err := checkMode(t.Mode); err != nil {
		return TLS{}, fmt.Errorf("PGSSLMODE: %w", err)
	}
	return t, nil
}

func supportedTLSKeys() string {
	keys := make([]string, len(tlsParams))
	for i, p := range tlsParams {
		keys[i] = p.key
	}
	return strings.Join(keys, ", ")
}

// ForService is what a service's own connections use: the server side of
// t, and over a unix socket (where libpq and pgx never use TLS) sslmode
// disable, which clients that default to require also accept.
func (t TLS) ForService(unixSocket bool) TLS {
	if unixSocket {
		return TLS{Mode: "disable"}
	}
	var out TLS
	for _, p := range tlsParams {
		if p.service {
			*p.field(&out) = *p.field(&t)
		}
	}
	return out
}

// Env renders t as libpq environment variables (PGSSLMODE=…), the unset
// ones left out.
func (t TLS) Env() []string {
	var env []string
	for _, p := range tlsParams {
		if v := *p.field(&t); v != "" {
			env = append(env, p.env+"="+v)
		}
	}
	return env
}

// SetQuery sets t as URL query parameters (sslmode=…), the unset ones
// left out.
func (t TLS) SetQuery(q url.Values) {
	for _, p := range tlsParams {
		if v := *p.field(&t); v != "" {
			q.Set(p.key, v)
		}
	}
}

// parameters returns the parameters of a libpq keyword/value conninfo
// or of the query of a postgres:// URL (where ssl=true means
// sslmode=require, as pgx has it). Its syntax errors are terse and never
// quote s, which may hold a password.
func parameters(s string) (map[string]string, error) {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		_, query, _ := strings.Cut(s, "?")
		params := map[string]string{}
		for _, kv := range strings.Split(query, "&") {
			if kv == "" {
				continue
			}
			k, v, _ := strings.Cut(kv, "=")
			// Percent-decoding only: to libpq (and pgx) "+" is a plus,
			// not a space.
			k, err1 := url.PathUnescape(k)
			v, err2 := url.PathUnescape(v)
			if err := errors.Join(err1, err2); err != nil {
				return nil, fmt.Errorf("URL query: %w", err)
			}
			params[k] = v
		}
		if params["ssl"] == "true" {
			delete(params, "ssl")
			if _, ok := params["sslmode"]; !ok {
				params["sslmode"] = "require"
			}
		}
		return params, nil
	}
	return keywordValues(s)
}

// keywordValues parses a libpq keyword/value conninfo: key = value pairs
// separated by whitespace; a value is single-quoted or runs to the next
// space; a backslash takes the next character literally.
func keywordValues(s string) (map[string]string, error) {
	const space = " \t\n\r\v\f"
	params := map[string]string{}
	s = strings.TrimLeft(s, space)
	for s != "" {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return nil, errors.New(`conninfo: missing "="`)
		}
		key := strings.TrimRight(s[:eq], space)
		s = strings.TrimLeft(s[eq+1:], space)
		var val strings.Builder
		quoted := strings.HasPrefix(s, "'")
		if quoted {
			s = s[1:]
		}
		i := 0
		for ; i < len(s); i++ {
			c := s[i]
			if quoted && c == '\'' {
				break
			}
			if !quoted && strings.IndexByte(space, c) >= 0 {
				break
			}
			if c == '\\' && i+1 < len(s) {
				i++
				c = s[i]
			} else if c == '\\' {
				continue
			}
			val.WriteByte(c)
		}
		if quoted {
			if i == len(s) {
				return nil, errors.New("conninfo: unterminated quoted string")
			}
			i++ // the closing quote
		}
		params[key] = val.String()
		s = strings.TrimLeft(s[i:], space)
	}
	return params, nil
}
