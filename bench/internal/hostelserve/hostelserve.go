// Package hostelserve runs a real `hostel serve` on a fresh root for the
// benchmarks that measure the daemon's process, reads what /proc says
// about a process, and is the small service those benchmarks deploy
// (ServeAppIfAsked).
package hostelserve

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Daemon is a running `hostel serve` and the directory it runs in.
type Daemon struct {
	Base   string // a fresh directory, removed by Close; hostel.json goes here
	Root   string // the daemon's --root, under Base
	Pid    int    // the daemon's process
	hostel string
	serve  *exec.Cmd
	log    *os.File
}

// Start starts the hostel binary's `hostel serve` on a new root under a
// new temporary directory named with prefix, and waits until it answers.
func Start(hostel, prefix string) (*Daemon, error) { return StartArgs(hostel, prefix) }

// StartArgs is Start with more flags for `hostel serve` (--etcd-embed,
// say).
func StartArgs(hostel, prefix string, args ...string) (*Daemon, error) {
	hostel, err := filepath.Abs(hostel)
	if err != nil {
		return nil, err
	}
	base, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	os.Chmod(base, 0o755) // service users must reach their state
	d := &Daemon{Base: base, Root: filepath.Join(base, "root"), hostel: hostel}
	d.serve = exec.Command(hostel, append([]string{"serve", "--root", d.Root, "--http", "127.0.0.1:0", "--https", ""}, args...)...)
	if d.log, err = os.Create(filepath.Join(base, "daemon.log")); err != nil {
		os.RemoveAll(base)
		return nil, err
	}
	d.serve.Stdout, d.serve.Stderr = d.log, d.log
	if err := d.serve.Start(); err != nil {
		d.log.Close()
		os.RemoveAll(base)
		return nil, err
	}
	d.Pid = d.serve.Process.Pid
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := d.CLI("status"); err == nil {
			return d, nil
		}
		if time.Now().After(deadline) {
			d.Close()
			return nil, errors.New("the daemon did not answer")
		}
	}
}

// CLI runs the hostel command with args against the daemon, in Base, and
// returns its standard output.
func (d *Daemon) CLI(args ...string) ([]byte, error) {
	c := exec.Command(d.hostel, append([]string{"--root", d.Root}, args...)...)
	c.Dir = d.Base
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return out, fmt.Errorf("hostel %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return out, nil
}

// Deploy writes hostel.json with services and deploys it.
func (d *Daemon) Deploy(services map[string]any) error {
	b, _ := json.Marshal(map[string]any{"services": services})
	if err := os.WriteFile(filepath.Join(d.Base, "hostel.json"), b, 0o644); err != nil {
		return err
	}
	_, err := d.CLI("deploy", "--no-confirm")
	return err
}

// Log returns what the daemon printed so far.
func (d *Daemon) Log() []byte {
	b, _ := os.ReadFile(d.log.Name())
	return b
}

// Close stops the services (and removes their cgroups) before the daemon
// goes, then removes Base.
func (d *Daemon) Close() {
	d.CLI("shutdown")
	d.serve.Process.Kill()
	d.serve.Wait()
	d.log.Close()
	os.RemoveAll(d.Base)
}

// Ready is an instance the daemon's node started and saw ready, and how
// long that took from its start: fork, exec, the program's own start,
// listening, the health check.
type Ready struct {
	Key  string // SERVICE-VERSION, or SERVICE-VERSION@ENV
	Took time.Duration
}

var readyRE = regexp.MustCompile(`(?m)\bready (\S+) on \S+ \(([^)]+)\)$`)

// Readies reads, from what a daemon printed (its log: the node's
// progress), every instance started and ready, in order.
func Readies(log []byte) []Ready {
	var out []Ready
	for _, m := range readyRE.FindAllSubmatch(log, -1) {
		if d, err := time.ParseDuration(string(m[2])); err == nil {
			out = append(out, Ready{Key: string(m[1]), Took: d})
		}
	}
	return out
}

// ReadyOf is service's own start→ready from what a daemon printed during
// a deploy that started one instance of it (the first such line).
func ReadyOf(log []byte, service string) (time.Duration, error) {
	for _, r := range Readies(log) {
		if strings.HasPrefix(r.Key, service+"-") {
			return r.Took, nil
		}
	}
	return 0, fmt.Errorf("the daemon did not say %s was ready:\n%s", service, log)
}

// Status returns a process's thread count and VmRSS in KiB, zeros if
// /proc cannot say.
func Status(pid int) (threads, rssKiB int) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Threads:":
			threads, _ = strconv.Atoi(f[1])
		case "VmRSS:":
			rssKiB, _ = strconv.Atoi(f[1])
		}
	}
	return threads, rssKiB
}

// ServeAppIfAsked makes a benchmark's own binary the service it deploys:
// run as `BINARY app`, it answers GET / with $TITLE on $HOST:$PORT and
// never returns; otherwise it returns at once.
func ServeAppIfAsked() {
	if len(os.Args) < 2 || os.Args[1] != "app" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, os.Getenv("TITLE")) })
	err := http.ListenAndServe(os.Getenv("HOST")+":"+os.Getenv("PORT"), mux)
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
