package supervisor

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCredentials runs a version with two credentials and checks the
// directory it gets: where it is, its modes, its content, that the
// environment names it but holds no secret, and that Stop removes it.
// It changes shmDir, so it does not run in parallel.
func TestCredentials(t *testing.T) {
	tests := []struct {
		name string
		shm  func(t *testing.T) string
		// inRun is whether the directory must be inside RUNTIME_DIRECTORY.
		inRun bool
	}{
		{name: "memory-backed /dev/shm", shm: func(*testing.T) string { return "/dev/shm" }},
		{name: "no memory-backed filesystem", shm: func(t *testing.T) string { return t.TempDir() }, inRun: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.inRun && !memoryBacked("/dev/shm") {
				t.Skip("/dev/shm is not a tmpfs here")
			}
			old := shmDir
			shmDir = tc.shm(t)
			t.Cleanup(func() { shmDir = old })

			s, root := newSupervisor(t, Options{})
			cfg := appConfig("credsvc")
			cfg.Env = map[string]string{"CREDENTIALS_DIRECTORY": "/tmp/evil"}
			cfg.Credentials = map[string][]byte{"stripe_key": []byte("sk-SECRET-1"), "db.pass": []byte("pw-SECRET-2")}
			i := startReady(t, s, cfg)

			var env map[string]string
			if err := json.Unmarshal(get(t, i.Addr(), "/env"), &env); err != nil {
				t.Fatal(err)
			}
			dir := env["CREDENTIALS_DIRECTORY"]
			runDir := filepath.Join(root, "run", "credsvc-0123456789ab")
			if inRun := strings.HasPrefix(dir, runDir+"/"); inRun != tc.inRun || dir == "/tmp/evil" {
				t.Fatalf("CREDENTIALS_DIRECTORY = %q; want inside %s: %v", dir, runDir, tc.inRun)
			}
			if !tc.inRun && !memoryBacked(dir) {
				t.Errorf("%s is not memory-backed", dir)
			}
			for k, v := range env {
				if strings.Contains(v, "SECRET") {
					t.Errorf("the environment holds a secret in %s", k)
				}
			}
			if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o500 {
				t.Fatalf("credentials dir: %v %v, want mode 0500", fi, err)
			}
			for name, want := range cfg.Credentials {
				p := filepath.Join(dir, name)
				fi, err := os.Stat(p)
				if err != nil || fi.Mode().Perm() != 0o400 {
					t.Errorf("%s: %v %v, want mode 0400", p, fi, err)
				}
				if got, _ := os.ReadFile(p); string(got) != string(want) {
					t.Errorf("%s holds %q, want %q", p, got, want)
				}
			}
			stop(t, s, i.Key())
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("credentials dir %s survives Stop: %v", dir, err)
			}
		})
	}
}
