package conninfo

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// FuzzTLSAgreesWithPgx: hostel reads the ssl* parameters with its own
// parser (pgx keeps no record of them), so for any conninfo both accept,
// the mode hostel passes to tools and services must be the one pgx — its
// own connections — acts on.
func FuzzTLSAgreesWithPgx(f *testing.F) {
	for _, s := range []string{
		"host=127.0.0.1 user=postgres",
		"host=db user=postgres sslmode=disable",
		"host=db user=postgres sslmode = 'allow'",
		"host=db user=postgres sslmode=prefer password='a b\\' sslmode=disable'",
		"host=db sslmode=require password=x\\ sslmode=disable",
		"host=db sslmode=verify-full sslsni=0",
		"postgres://u:p@db/x?sslmode=require",
		"postgres://u:p@db/x?ssl=true",
		"postgres://u:p@db/x?sslmode=disable&sslmode=verify-ca",
		"postgres://u:p@db/x?application_name=a%26sslmode%3Ddisable",
		"host=/run/postgresql sslmode=require",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, k := range []string{"PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSSLSNI", "PGSERVICE", "PGSERVICEFILE", "PGSSLNEGOTIATION"} {
			t.Setenv(k, "")
		}
		if strings.Contains(s, "service") || strings.Contains(s, "sslrootcert") {
			t.Skip("reads files")
		}
		cfg, err := pgx.ParseConfig(s)
		if err != nil {
			return
		}
		tls, err := ParseTLS(s)
		if err != nil {
			return
		}
		if strings.HasPrefix(cfg.Host, "/") {
			return // no TLS over a unix socket, whatever the mode
		}
		if len(cfg.Fallbacks) > 1 || (len(cfg.Fallbacks) == 1 && (cfg.Fallbacks[0].Host != cfg.Host || cfg.Fallbacks[0].Port != cfg.Port)) {
			return // several hosts: one host has at most one fallback, for allow or prefer
		}
		var got string
		switch {
		case cfg.TLSConfig == nil && len(cfg.Fallbacks) == 0:
			got = "disable"
		case cfg.TLSConfig == nil:
			got = "allow"
		case len(cfg.Fallbacks) == 1 && cfg.Fallbacks[0].TLSConfig == nil:
			got = "prefer"
		case !cfg.TLSConfig.InsecureSkipVerify:
			got = "verify-full"
		case cfg.TLSConfig.VerifyPeerCertificate != nil:
			got = "verify-ca"
		default:
			got = "require"
		}
		if got != tls.Mode {
			t.Errorf("%q: pgx connects with sslmode %s, hostel passes on %s", s, got, tls.Mode)
		}
	})
}
