package e2e

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hostel/internal/cgroup"
)

// memory and cpu in a spec reach the kernel: the deployed version runs in
// a cgroup of its own with those limits, status --json reports its use,
// and the group goes with the version.
func TestLimitsEnforcedWithCgroups(t *testing.T) {
	e := NewEnv(t)
	if _, err := cgroup.Open(e.Root); errors.Is(err, cgroup.ErrUnavailable) {
		t.Skipf("no cgroups on this machine: %v", err)
	}
	e.StartDaemon()
	e.WriteSpec(map[string]any{"services": map[string]any{
		"quotes": e.App("quotes", map[string]any{"memory": "64M", "cpu": 0.5}),
	}})
	if _, stderr, code := e.Run("plan"); code != 0 || strings.Contains(stderr, "not enforced") {
		t.Errorf("plan: exit %d, stderr %q; want no warning where limits are enforced", code, stderr)
	}
	e.MustRun("deploy", "--no-confirm")

	var st struct {
		Services []struct {
			Name, Version string
			MemoryBytes   int64   `json:"memory_bytes"`
			CPUSeconds    float64 `json:"cpu_seconds"`
		}
	}
	if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Services) != 1 || st.Services[0].MemoryBytes <= 0 || st.Services[0].CPUSeconds < 0 {
		t.Fatalf("status --json services = %+v, want quotes with memory_bytes > 0", st.Services)
	}
	group := cgroup.Name(e.Root) + "/quotes-" + st.Services[0].Version
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err != nil {
		t.Skipf("not the v1 layout of these machines (%v); the cgroup package's tests cover the limits", err)
	}
	for file, want := range map[string]string{
		"/sys/fs/cgroup/memory/" + group + "/memory.limit_in_bytes": "67108864",
		"/sys/fs/cgroup/cpu/" + group + "/cpu.cfs_quota_us":         "50000",
		"/sys/fs/cgroup/pids/" + group + "/pids.max":                "4096",
	} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Errorf("the version's cgroup: %v", err)
			continue
		}
		if got := strings.TrimSpace(string(b)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}

	e.Shutdown()
	left, _ := filepath.Glob("/sys/fs/cgroup/*/" + cgroup.Name(e.Root) + "/*")
	var dirs []string
	for _, l := range left {
		if fi, err := os.Stat(l); err == nil && fi.IsDir() {
			dirs = append(dirs, l)
		}
	}
	if len(dirs) > 0 {
		t.Errorf("cgroups left after hostel shutdown: %v", dirs)
	}
}
