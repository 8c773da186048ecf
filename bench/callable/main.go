// Command callable measures what keeping replaced versions callable
// (old_versions "callable", issue 14) costs a real daemon: one service is
// deployed -versions times, each time with a new version, on two daemons
// side by side — one whose service says "callable", the baseline "stop".
// It reports the time of the last deploys (when the callable daemon holds
// every replaced version asleep) against the first ones, and the daemon's
// resident memory with every kept version asleep, each against the
// baseline daemon in the same run.
//
//	go run ./bench/callable -hostel bin/hostel
//
// The binary is also the service (`callable app`): a net/http server.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"hostel/bench/internal/hostelserve"
)

func main() {
	hostelserve.ServeAppIfAsked()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "callable:", err)
		os.Exit(1)
	}
}

// side is one daemon of the comparison.
type side struct {
	mode    string // the service's old_versions
	d       *hostelserve.Daemon
	app     string
	deploys []float64 // ms, in order
}

func run() error {
	hostelBin := flag.String("hostel", "bin/hostel", "the hostel binary")
	versions := flag.Int("versions", 100, "deploys, each of a new version")
	window := flag.Int("window", 10, "deploys timed at the start and at the end")
	flag.Parse()
	if *versions < 2**window {
		return errors.New("-versions must be at least twice -window")
	}
	var sides []*side
	for _, mode := range []string{"stop", "callable"} {
		d, err := hostelserve.Start(*hostelBin, "hostel-callable-")
		if err != nil {
			return err
		}
		defer d.Close()
		// The service is this binary, copied where service users can run it.
		self, _ := os.Executable()
		app := filepath.Join(d.Base, "app")
		if err := copyFile(self, app); err != nil {
			return err
		}
		sides = append(sides, &side{mode: mode, d: d, app: app})
	}
	// Alternate the two daemons deploy by deploy: drift on these shared
	// machines hits both alike.
	for i := range *versions {
		for _, s := range sides {
			t0 := time.Now()
			err := s.d.Deploy(map[string]any{"api": map[string]any{"exec": []string{s.app, "app"},
				"env": map[string]string{"TITLE": fmt.Sprint(i)}, "old_versions": s.mode}})
			if err != nil {
				return fmt.Errorf("%s: deploy %d: %w", s.mode, i, err)
			}
			s.deploys = append(s.deploys, float64(time.Since(t0))/float64(time.Millisecond))
		}
	}
	stop, callable := sides[0], sides[1]
	// Every kept version asleep: status --all lists none with a process.
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		awake, kept, err := keptAwake(callable.d)
		if err != nil {
			return err
		}
		if kept != *versions-1 {
			return fmt.Errorf("status --all lists %d kept versions, want %d", kept, *versions-1)
		}
		if awake == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d kept versions still awake after 2 minutes", awake)
		}
	}
	_, rssStop := hostelserve.Status(stop.d.Pid)
	_, rssCallable := hostelserve.Status(callable.d.Pid)
	w := *window
	fmt.Printf("%d deploys of one service, each a new version; the two daemons alternate\n", *versions)
	for _, s := range sides {
		first, last := median(s.deploys[1:w+1]), median(s.deploys[len(s.deploys)-w:])
		fmt.Printf("%-8s deploy, median of deploys 2–%d: %.0f ms; of the last %d: %.0f ms (%.2f×)\n",
			s.mode, w+1, first, w, last, last/first)
	}
	fmt.Printf("last %d deploys, callable against stop: %.2f×\n", w,
		median(callable.deploys[len(callable.deploys)-w:])/median(stop.deploys[len(stop.deploys)-w:]))
	fmt.Printf("daemon VmRSS: callable with %d versions kept asleep %.1f MiB, stop %.1f MiB (%.2f×)\n",
		*versions-1, float64(rssCallable)/1024, float64(rssStop)/1024, float64(rssCallable)/float64(rssStop))
	return nil
}

// keptAwake counts the kept versions status --all lists, and those of
// them with a process.
func keptAwake(d *hostelserve.Daemon) (awake, kept int, err error) {
	out, err := d.CLI("status", "--all", "--json")
	if err != nil {
		return 0, 0, err
	}
	var st struct {
		Services []struct {
			PID  int  `json:"pid"`
			Kept bool `json:"kept"`
		} `json:"services"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return 0, 0, err
	}
	for _, s := range st.Services {
		if s.Kept {
			kept++
			if s.PID != 0 {
				awake++
			}
		}
	}
	return awake, kept, nil
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o755)
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
