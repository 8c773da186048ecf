//go:build !failpoints

package failpoint

import (
	"strings"
	"testing"
)

// TestOffIgnoresConfiguration: built without the failpoints tag, a
// process does nothing at its sites whatever the configuration says — a
// kill, an error, or a configuration that would not even parse.
func TestOffIgnoresConfiguration(t *testing.T) {
	if Enabled {
		t.Fatal("Enabled without the failpoints tag")
	}
	for _, cfg := range []string{
		EnvVar + "=launch-after-start=kill;store-before-commit=error",
		KillEnvVar + "=launch-after-start",
		EnvVar + "=not a configuration",
	} {
		out, errOut, st := child(t, "sites", cfg)
		if st.ExitCode() != 0 || killed(st) {
			t.Errorf("%s: the child ended %v\n%s%s", cfg, st, out, errOut)
		}
		if want := "hit: went on\ninject: <nil>\n"; out != want {
			t.Errorf("%s: the sites did\n%s\nwant\n%s", cfg, out, want)
		}
		if strings.Contains(errOut, "failpoint") || strings.Contains(errOut, EnvVar) {
			t.Errorf("%s: the child said %q", cfg, errOut)
		}
	}
}
