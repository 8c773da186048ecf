// Command previews measures preview environments (issue 15) on a real
// daemon: a 20-service spec (app00 needed by app01…app18, the leaf app19
// needing app05) is deployed to production; then, rounds times, a preview
// with the leaf changed is deployed, timed from `hostel deploy --env` to
// the preview answering on its internal name, and removed. The baseline,
// from the same run, is the changed service's own start→ready time (the
// node's "ready … (DURATION)" line in the daemon's log). Memory added per preview is the
// resident memory of the root's processes and the daemon with the preview
// less without it.
//
//	go run ./bench/previews -hostel bin/hostel
//
// The binary is also the service (`previews app`): a net/http server with
// a health check.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"hostel/bench/internal/hostelserve"
)

func main() {
	hostelserve.ServeAppIfAsked()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "previews:", err)
		os.Exit(1)
	}
}

func run() error {
	hostelBin := flag.String("hostel", "bin/hostel", "the hostel binary")
	rounds := flag.Int("rounds", 10, "previews to deploy and remove")
	flag.Parse()
	bin, err := filepath.Abs(*hostelBin)
	if err != nil {
		return err
	}
	hd, err := hostelserve.Start(bin, "hostel-previews-")
	if err != nil {
		return err
	}
	defer hd.Close()
	h := &daemon{Daemon: hd, bin: bin}
	var st struct{ Listen struct{ HTTP string } }
	if out, err := h.CLI("status", "--json"); err != nil || json.Unmarshal(out, &st) != nil {
		return fmt.Errorf("status: %v", err)
	}
	h.addr = st.Listen.HTTP
	// The service is this binary, copied where service users can run it.
	self, _ := os.Executable()
	app := filepath.Join(h.Base, "app")
	if err := copyFile(self, app); err != nil {
		return err
	}
	root := h.Base
	spec := func(leaf string) string {
		svcs := map[string]any{}
		for i := range 20 {
			name := fmt.Sprintf("app%02d", i)
			s := map[string]any{"exec": []string{app, "app"}, "env": map[string]string{"TITLE": name}, "health": map[string]any{"path": "/"}}
			switch {
			case i == 19:
				s["env"] = map[string]string{"TITLE": leaf}
				s["needs"] = []string{"app05"}
			case i > 0:
				s["needs"] = []string{"app00"}
			}
			svcs[name] = s
		}
		b, _ := json.Marshal(map[string]any{"services": svcs})
		file := filepath.Join(root, leaf+".json")
		os.WriteFile(file, b, 0o644)
		return file
	}
	if out, err := h.run("deploy", "--no-confirm", spec("production")); err != nil {
		return fmt.Errorf("deploy: %v\n%s", err, out)
	}
	prod := float64(h.rss()) / (1 << 20)
	var answer, ready, added []float64
	for i := range *rounds {
		env := fmt.Sprintf("pr-%d", i)
		file := spec(env)
		before := h.rss()
		logged := len(h.Log())
		t0 := time.Now()
		out, err := h.run("deploy", "--env", env, "--no-confirm", file)
		if err != nil {
			return fmt.Errorf("deploy --env %s: %v\n%s", env, err, out)
		}
		if err := h.get("app19."+env+".hostel.internal", env); err != nil {
			return err
		}
		answer = append(answer, ms(time.Since(t0)))
		own, err := hostelserve.ReadyOf(h.Log()[logged:], "app19")
		if err != nil {
			return err
		}
		ready = append(ready, ms(own))
		added = append(added, float64(h.rss()-before)/(1<<20))
		if out, err := h.run("env", "rm", env); err != nil {
			return fmt.Errorf("env rm %s: %v\n%s", env, err, out)
		}
	}
	fmt.Printf("rounds: %d previews of the 20-service spec with its leaf changed, each deployed and removed\n", *rounds)
	fmt.Printf("deploy --env to the preview answering: median %.0f ms (min %.0f, max %.0f)\n", median(answer), slices.Min(answer), slices.Max(answer))
	fmt.Printf("the changed service's own start→ready (baseline): median %.0f ms\n", median(ready))
	fmt.Printf("overhead beyond the baseline: median %.0f ms\n", median(sub(answer, ready)))
	fmt.Printf("memory added per preview (RSS of the daemon and the root's processes): median %.1f MiB, against %.1f MiB for production's 20 services and the daemon (%.2f×)\n",
		median(added), prod, median(added)/prod)
	return nil
}

// daemon is hostel serve on a fresh root, and its public HTTP address.
type daemon struct {
	*hostelserve.Daemon
	bin, addr string
}

// run runs a hostel command and returns its stdout and stderr.
func (d *daemon) run(args ...string) ([]byte, error) {
	return exec.Command(d.bin, append([]string{"--root", d.Root}, args...)...).CombinedOutput()
}

// get asks host for / and wants 200 with body want.
func (d *daemon) get(host, want string) error {
	req, _ := http.NewRequest("GET", "http://"+d.addr+"/", nil)
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != want {
		return fmt.Errorf("%s: %s %q, want %q", host, resp.Status, b, want)
	}
	return nil
}

// rss is the resident memory, in bytes, of the daemon and of every
// process of its root (RUNTIME_DIRECTORY under ROOT/run).
func (d *daemon) rss() int64 {
	run := filepath.Join(d.Root, "run") + "/"
	_, kib := hostelserve.Status(d.Pid)
	total := int64(kib) << 10
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err == nil && strings.Contains(string(b), "RUNTIME_DIRECTORY="+run) {
			_, kib := hostelserve.Status(pid)
			total += int64(kib) << 10
		}
	}
	return total
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func sub(a, b []float64) []float64 {
	out := make([]float64, len(a))
	for i := range a {
		out[i] = a[i] - b[i]
	}
	return out
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}
