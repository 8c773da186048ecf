package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstall: hostel install writes hostel.socket and hostel.service that
// systemd-analyze verify accepts, the socket unit holding the public
// listeners and the API socket, the service running hostel serve on them;
// an address systemd cannot listen on is refused (exit 2) and nothing is
// written.
func TestInstall(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatal("systemd-analyze is missing: make deps (scripts/install-deps.sh) installs it")
	}
	tests := []struct {
		name        string
		args        []string
		code        int
		stderr      string
		socket      []string // lines hostel.socket must hold
		serviceArgs string   // what ExecStart runs after the binary
	}{
		{"defaults", nil, 0, "systemctl daemon-reload",
			[]string{"ListenStream=80", "ListenStream=443", "ListenStream=/srv/hostel/hostel.sock", "SocketMode=0600", "FileDescriptorName=hostel"},
			"serve --root /srv/hostel --http :80 --https :443"},
		{"HTTP only", []string{"--http", "127.0.0.1:8080", "--https", ""}, 0, "",
			[]string{"ListenStream=127.0.0.1:8080", "ListenStream=/srv/hostel/hostel.sock"},
			`serve --root /srv/hostel --http 127.0.0.1:8080 --https ""`},
		{"port 0", []string{"--http", "127.0.0.1:0"}, 2, `--http: "127.0.0.1:0" is not an address systemd can listen on`, nil, ""},
		{"no port", []string{"--https", "example.org"}, 2, `--https: "example.org" is not an address`, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			t.Setenv(unitDirEnv, dir)
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"--root", "/srv/hostel", "install"}, tt.args...), &stdout, &stderr)
			if code != tt.code || !strings.Contains(stderr.String(), tt.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d, %q", code, stderr.String(), tt.code, tt.stderr)
			}
			socket, errS := os.ReadFile(filepath.Join(dir, "hostel.socket"))
			service, errV := os.ReadFile(filepath.Join(dir, "hostel.service"))
			if tt.code != 0 {
				if errS == nil || errV == nil {
					t.Errorf("a refused install wrote units")
				}
				return
			}
			if errS != nil || errV != nil {
				t.Fatal(errS, errV)
			}
			lines := strings.Split(string(socket), "\n")
			for _, want := range tt.socket {
				if !contains(lines, want) {
					t.Errorf("hostel.socket lacks %q:\n%s", want, socket)
				}
			}
			bin, _ := os.Executable()
			for _, want := range []string{"Type=notify", "NotifyAccess=all", "KillMode=process", "Restart=on-failure", "Requires=hostel.socket",
				"ExecStart=" + bin + " " + tt.serviceArgs} {
				if !contains(strings.Split(string(service), "\n"), want) {
					t.Errorf("hostel.service lacks %q:\n%s", want, service)
				}
			}
			cmd := exec.Command("systemd-analyze", "verify", filepath.Join(dir, "hostel.socket"), filepath.Join(dir, "hostel.service"))
			if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
				t.Errorf("systemd-analyze verify: %v\n%s", err, out)
			}
		})
	}
}

func contains(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}
