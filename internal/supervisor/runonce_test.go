package supervisor

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunOnce runs a one-shot command as the service would run: its user,
// its environment and credentials, its package directory; output and exit
// status come back, and its private directories are gone afterwards.
func TestRunOnce(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	t.Parallel()
	const service = "suptest-once"
	t.Cleanup(func() { exec.Command("userdel", UserName(service)).Run() })
	s, root := newSupervisor(t, Options{RunAsUsers: true})
	pkg := t.TempDir()
	os.Chmod(pkg, 0o755)
	os.Chmod(filepath.Dir(pkg), 0o755) // t.TempDir's parent is 0700
	script := "#!/bin/sh\necho \"user=$(id -un) dir=$(pwd) svc=$HOSTEL_SERVICE db=$PGDATABASE secret=$(cat $CREDENTIALS_DIRECTORY/token) notify=${NOTIFY_SOCKET-unset} port=${PORT-unset} host=${HOST-unset}\"\ntest -d \"$RUNTIME_DIRECTORY\" || exit 9\nexit ${1:-0}\n"
	if err := os.MkdirAll(filepath.Join(pkg, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkg, "bin", "migrate"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Service: service, Version: "0123456789ab", Dir: pkg, Exec: []string{"bin/serve"},
		Env: map[string]string{"PGDATABASE": "shop"}, Credentials: map[string][]byte{"token": []byte("s3cret")}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	for _, tc := range []struct {
		name    string
		argv    []string
		wantErr bool
	}{
		{"success", []string{"bin/migrate"}, false},
		{"failure", []string{"bin/migrate", "3"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := s.RunOnce(ctx, cfg, tc.argv)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v; output %s", err, tc.wantErr, out)
			}
			if tc.wantErr && !strings.Contains(err.Error(), "exit status 3") {
				t.Errorf("error %v does not give the exit status", err)
			}
			want := "user=" + UserName(service) + " dir=" + pkg + " svc=" + service + " db=shop secret=s3cret notify=unset port=unset host=unset"
			if got := strings.TrimSpace(string(out)); got != want {
				t.Errorf("output %q, want %q", got, want)
			}
		})
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "run")); len(ents) != 0 {
		t.Errorf("left behind in run/: %v", ents)
	}
}
