package conninfo_test

import (
	"strings"
	"testing"

	"hostel/internal/postgres/conninfo"
)

// TestCheck: what spec validation checks of postgres.admin, without
// the files it names; errors never quote the password.
func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		admin   string
		errWant string // "" for valid
	}{
		{"host=/run/postgresql user=postgres", ""},
		{"host=db.internal user=postgres password=s3cret sslmode=verify-full sslrootcert=/not/here.crt", ""},
		{"postgres://postgres:s3cret@db.internal/postgres?sslmode=require", ""},
		{"host=db.internal password=s3cret sslcrl=/etc/crl.pem", "sslcrl"},
		{"postgres://postgres:s3cret@db.internal/postgres?ssl_min_protocol_version=TLSv1.3", "ssl_min_protocol_version"},
		{"host=db.internal password=s3cret sslmode=sometimes", `sslmode "sometimes"`},
		{"host=db.internal password='s3cret", "unterminated"},
	} {
		t.Run(tc.admin, func(t *testing.T) {
			err := conninfo.Check(tc.admin)
			switch {
			case tc.errWant == "" && err != nil:
				t.Fatalf("Check: %v", err)
			case tc.errWant != "" && (err == nil || !strings.Contains(err.Error(), tc.errWant)):
				t.Fatalf("Check: %v; want an error naming %s", err, tc.errWant)
			case err != nil && strings.Contains(err.Error(), "s3cret"):
				t.Fatalf("the error quotes the password: %v", err)
			}
		})
	}
}
