package e2e

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hostel/internal/cgroup"
)

// memory and cpu in a spec reach the kernel: the deployed version runs in
// a cgroup of its own with those limits, status --json reports its use, a
// version past its memory is killed and reported "oom" (status and logs),
// and the groups go with the versions.
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

	// Past its memory, a version is killed by the kernel: status and its
	// log say so, and it is restarted.
	e.WriteSpec(map[string]any{"services": map[string]any{
		"quotes": e.App("quotes", map[string]any{"memory": "64M", "cpu": 0.5}),
		"slow": map[string]any{"package": slowApp(t), "exec": []string{"bin/slowapp"}, "memory": "48M",
			"domains": []string{"slow.example"}, "health": map[string]any{"path": "/healthz"}},
	}})
	e.MustRun("deploy", "--no-confirm")
	req, _ := http.NewRequest("GET", "http://"+e.HTTP+"/alloc?mb=200", nil)
	req.Host = "slow.example"
	if resp, err := httpClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatalf("allocating 200 MiB under a 48 MiB limit answered %s", resp.Status)
		}
	}
	var lastExit string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && lastExit != "oom"; time.Sleep(100 * time.Millisecond) {
		var st struct {
			Services []struct {
				Name     string
				LastExit string `json:"last_exit"`
			}
		}
		if err := json.Unmarshal([]byte(e.MustRun("status", "--json")), &st); err != nil {
			t.Fatal(err)
		}
		for _, s := range st.Services {
			if s.Name == "slow" {
				lastExit = s.LastExit
			}
		}
	}
	if lastExit != "oom" {
		t.Errorf("slow's last_exit = %q after exceeding its memory, want \"oom\"", lastExit)
	}
	if logs := e.MustRun("logs", "slow", "-n", "50"); !strings.Contains(logs, "killed by the kernel for exceeding its memory limit") {
		t.Errorf("hostel logs slow does not say it was killed for its memory:\n%s", logs)
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
