// Command deploy measures a deploy's overhead on each store, side by
// side in one run: `hostel serve` on bbolt and `hostel serve
// --etcd-embed` (an etcd member in the daemon), each on a fresh root with
// a three-service spec (db; api needing db; web, with a domain, needing
// api). Rounds times, on each daemon in turn (every other round in
// reverse order), web alone is changed and deployed with --no-confirm,
// timed from the start of `hostel deploy` to web.bench answering with the
// new version (the switch), and to the command's exit (the old version
// drained). The baseline, from the same deploy, is web's own start→ready
// (the node's "ready … (DURATION)" line in the daemon's log: fork, exec,
// the Go runtime, listening, the health check); the overhead is the time to the answer
// less it: the CLI, planning, the store's round trips, the node's
// reports, the route table's switch.
//
//	go run ./bench/deploy -hostel bin/hostel
//
// The binary is also the service (`deploy app`).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"hostel/bench/internal/hostelserve"
)

func main() {
	hostelserve.ServeAppIfAsked()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "deploy bench:", err)
		os.Exit(1)
	}
}

// daemon is one store's `hostel serve`, its public address and what was
// measured on it.
type daemon struct {
	*hostelserve.Daemon
	name, bin, addr, app string
	answer, exit, ready  []time.Duration
}

func run() error {
	hostelBin := flag.String("hostel", "bin/hostel", "the hostel binary")
	rounds := flag.Int("rounds", 20, "deploys on each store")
	flag.Parse()
	bin, err := filepath.Abs(*hostelBin)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var ds []*daemon
	defer func() {
		for _, d := range ds {
			d.Close()
		}
	}()
	for _, store := range []struct {
		name string
		args []string
	}{{"bbolt", nil}, {"etcd-embed", []string{"--etcd-embed"}}} {
		hd, err := hostelserve.StartArgs(bin, "hostel-deploy-bench-", store.args...)
		if err != nil {
			return fmt.Errorf("%s: %w", store.name, err)
		}
		d := &daemon{Daemon: hd, name: store.name, bin: bin}
		ds = append(ds, d)
		var st struct{ Listen struct{ HTTP string } }
		if out, err := d.CLI("status", "--json"); err != nil || json.Unmarshal(out, &st) != nil {
			return fmt.Errorf("%s: status: %v", store.name, err)
		}
		d.addr = st.Listen.HTTP
		// The service is this binary, copied where service users can run it.
		d.app = filepath.Join(d.Base, "app")
		if err := copyFile(self, d.app); err != nil {
			return err
		}
		if _, err := d.deploy("web-0"); err != nil {
			return fmt.Errorf("%s: first deploy: %w", store.name, err)
		}
	}
	for i := 1; i <= *rounds; i++ {
		order := ds
		if i%2 == 0 {
			order = []*daemon{ds[1], ds[0]}
		}
		for _, d := range order {
			if err := d.measure(fmt.Sprintf("web-%d", i)); err != nil {
				return fmt.Errorf("%s, round %d: %w", d.name, i, err)
			}
		}
	}
	fmt.Printf("%d deploys of one changed service of three on each store, --no-confirm; min / median / max\n\n", *rounds)
	fmt.Println("| store | deploy → answered | the service's own start→ready | overhead (answered − ready) | deploy → command done |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: |")
	for _, d := range ds {
		fmt.Printf("| %s | %s | %s | %s | %s |\n", d.name, spread(d.answer), spread(d.ready), spread(sub(d.answer, d.ready)), spread(d.exit))
	}
	return nil
}

// spec writes the spec with web's title and returns its file.
func (d *daemon) spec(title string) string {
	svc := func(t string, needs []string, domains []string) map[string]any {
		s := map[string]any{"exec": []string{d.app, "app"}, "env": map[string]string{"TITLE": t},
			"health": map[string]any{"path": "/"}, "stop_grace": "1s"}
		if needs != nil {
			s["needs"] = needs
		}
		if domains != nil {
			s["domains"] = domains
		}
		return s
	}
	b, _ := json.Marshal(map[string]any{"services": map[string]any{
		"db":  svc("db", nil, nil),
		"api": svc("api", []string{"db"}, nil),
		"web": svc(title, []string{"api"}, []string{"web.bench"}),
	}})
	file := filepath.Join(d.Base, "hostel.json")
	os.WriteFile(file, b, 0o644)
	return file
}

// deploy deploys the spec with web's title and returns its progress.
func (d *daemon) deploy(title string) ([]byte, error) {
	file := d.spec(title)
	out, err := exec.Command(d.bin, "--root", d.Root, "deploy", "--no-confirm", file).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("deploy: %v\n%s", err, out)
	}
	return out, nil
}

// measure deploys web titled title and times it.
func (d *daemon) measure(title string) error {
	file := d.spec(title)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	answered := make(chan time.Time, 1)
	go func() {
		c := &http.Client{Timeout: 5 * time.Second}
		for ctx.Err() == nil {
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+d.addr+"/", nil)
			req.Host = "web.bench"
			if resp, err := c.Do(req); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) == title {
					answered <- time.Now()
					return
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	logged := len(d.Log())
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, d.bin, "--root", d.Root, "deploy", "--no-confirm", file).CombinedOutput()
	done := time.Now()
	if err != nil {
		return fmt.Errorf("deploy: %v\n%s", err, out)
	}
	var at time.Time
	select {
	case at = <-answered:
	case <-ctx.Done():
		return fmt.Errorf("web.bench never answered %q", title)
	}
	own, err := hostelserve.ReadyOf(d.Log()[logged:], "web")
	if err != nil {
		return err
	}
	d.answer = append(d.answer, at.Sub(t0))
	d.exit = append(d.exit, done.Sub(t0))
	d.ready = append(d.ready, own)
	return nil
}

// spread is "min / median / max" in milliseconds.
func spread(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }
	return strings.Join([]string{ms(s[0]), ms(s[len(s)/2]), ms(s[len(s)-1])}, " / ") + " ms"
}

func sub(a, b []time.Duration) []time.Duration {
	out := make([]time.Duration, len(a))
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
