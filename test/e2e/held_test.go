package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"hostel/internal/supervisor/supervisortest"
)

// upload is the answer to a raw upload: status, header and body, or why
// none came.
type upload struct {
	code   int
	header http.Header
	body   string
	err    error
}

// rawUpload POSTs size bytes to /upload for host over a raw socket, with
// "Expect: 100-continue" if expect (the body then follows after a second
// without 100 Continue, as curl sends it), and returns the answer.
func (e *Env) rawUpload(host string, size int, expect bool) upload {
	e.t.Helper()
	c, err := net.Dial("tcp", e.HTTP)
	if err != nil {
		return upload{err: err}
	}
	defer c.Close()
	head := fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n", host, size)
	if expect {
		head += "Expect: 100-continue\r\n"
	}
	if _, err := io.WriteString(c, head+"\r\n"); err != nil {
		return upload{err: err}
	}
	go func() {
		if expect {
			time.Sleep(time.Second)
		}
		c.Write(make([]byte, size))
	}()
	c.SetReadDeadline(time.Now().Add(time.Minute))
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return upload{err: err}
		}
		if resp.StatusCode == http.StatusContinue {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		return upload{code: resp.StatusCode, header: resp.Header, body: string(b)}
	}
}

// heldFiles returns the sizes of the files the daemon holds open under
// ROOT/tmp: the bodies of held requests spooled to disk (unlinked at
// once, so only its descriptors show them).
func (e *Env) heldFiles() []int64 {
	e.t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", e.daemon.Process.Pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		e.t.Fatal(err)
	}
	var sizes []int64
	for _, ent := range ents {
		target, err := os.Readlink(filepath.Join(dir, ent.Name()))
		if err != nil || !strings.HasPrefix(target, filepath.Join(e.Root, "tmp")+"/") {
			continue
		}
		if fi, err := os.Stat(filepath.Join(dir, ent.Name())); err == nil {
			sizes = append(sizes, fi.Size())
		}
	}
	return sizes
}

// waitHeldFiles waits until the daemon's held bodies on disk are as
// cond wants.
func (e *Env) waitHeldFiles(what string, cond func(sizes []int64) bool) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		sizes := e.heldFiles()
		if cond(sizes) {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s: held bodies on disk %v", what, sizes)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHeldUploadLimits: the bodies of requests held by a pause are bounded
// as `hostel serve` is told (--max-held-body, --max-held-memory,
// --max-held-disk): past the body limit a held upload gets 413 and past
// the disk budget 503 with Retry-After, at once and while still held; an
// upload within them reaches the app whole on resume; one that asks for
// 100-continue is not read ahead at all (it streams to the app on resume,
// however large); and nothing is left in ROOT/tmp.
func TestHeldUploadLimits(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "",
		"--max-held-body", "1M", "--max-held-memory", "64K", "--max-held-disk", "1536K")
	e.WriteSpec(map[string]any{"services": map[string]any{
		"slow": map[string]any{"package": slowApp(t), "exec": []string{"bin/slowapp"}, "domains": []string{"up.test"}},
	}})
	e.MustRun("deploy", "--no-confirm")
	e.MustRun("pause", "slow", "--max", "5m")

	if r := e.rawUpload("up.test", 3<<20, false); r.err != nil || r.code != http.StatusRequestEntityTooLarge {
		t.Fatalf("a held 3 MiB upload past --max-held-body 1M: %d %q (%v), want 413", r.code, r.body, r.err)
	}
	e.waitHeldFiles("the refused body's file gone", func(s []int64) bool { return len(s) == 0 })

	// Within the limits: 64 KiB in memory, the rest on disk.
	const within = 900_000
	held := make(chan upload, 1)
	go func() { held <- e.rawUpload("up.test", within, false) }()
	e.waitHeldFiles("the held body spooled", func(s []int64) bool { return len(s) == 1 && s[0] == within-64<<10 })
	// A second one would pass the disk budget.
	if r := e.rawUpload("up.test", within, false); r.err != nil || r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Errorf("a held upload past --max-held-disk: %d %v %q (%v), want 503 with Retry-After", r.code, r.header, r.body, r.err)
	}
	// With Expect: 100-continue, nothing is read ahead.
	expecting := make(chan upload, 1)
	go func() { expecting <- e.rawUpload("up.test", 3<<20, true) }()
	time.Sleep(2 * time.Second) // past the second its client waits for 100 Continue
	if s := e.heldFiles(); len(s) != 1 || s[0] != within-64<<10 {
		t.Errorf("held bodies on disk %v with an upload that asked for 100-continue; want only the first one's", s)
	}

	e.MustRun("resume", "slow")
	for _, c := range []struct {
		what string
		ch   chan upload
		n    int
	}{{"the held upload", held, within}, {"the upload that asked for 100-continue", expecting, 3 << 20}} {
		select {
		case r := <-c.ch:
			if want := fmt.Sprintf("got %d bytes\n", c.n); r.err != nil || r.code != 200 || r.body != want {
				t.Errorf("%s on resume: %d %q (%v), want 200 %q", c.what, r.code, r.body, r.err, want)
			}
		case <-time.After(time.Minute):
			t.Fatalf("%s: no answer a minute after the resume", c.what)
		}
	}
	e.waitHeldFiles("every held body's file gone", func(s []int64) bool { return len(s) == 0 })
	if ents, _ := os.ReadDir(filepath.Join(e.Root, "tmp")); len(ents) != 0 {
		t.Errorf("ROOT/tmp holds %d files", len(ents))
	}
}

var (
	lateAppOnce sync.Once
	lateAppDir  string
	lateAppErr  error
)

// lateApp builds the supervisor's test service, which can send READY=1
// before it listens (-notify -slow-start), into a package directory
// service users can read; its binary is "app".
func lateApp(t testing.TB) string {
	t.Helper()
	lateAppOnce.Do(func() { lateAppDir, lateAppErr = supervisortest.BuildApp("hostel-e2e-late-") })
	if lateAppErr != nil {
		t.Fatal(lateAppErr)
	}
	return lateAppDir
}

// TestReadyBeforeListening: a service that sends READY=1 and listens
// 300 ms later (as many Go apps do, starting their server in a goroutine)
// answers every request with no error: when it is woken from sleep, again
// and again; when a deploy switches to a new version of it; and when an
// exclusive service's deploy hands the requests it held to the new one.
func TestReadyBeforeListening(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemon()
	pkg := lateApp(t)
	write := func(v string, exclusive bool) {
		e.WriteSpec(map[string]any{"services": map[string]any{
			"late": map[string]any{"package": pkg, "exec": []string{"app", "-notify", "-slow-start", "300ms"},
				"env": map[string]string{"V": v}, "idle": "1s", "exclusive": exclusive, "domains": []string{"late.test"}},
		}})
	}
	write("1", false)
	e.MustRun("deploy", "--no-confirm")
	for i := range 5 {
		e.waitState(30*time.Second, "idle", "late")
		if code, _, body := e.Get("late.test", "/healthz"); code != 200 {
			t.Fatalf("request %d, waking the service: %d %q", i+1, code, body)
		}
	}

	stop := make(chan struct{})
	var mu sync.Mutex
	ok, failed := 0, []string{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := &http.Client{Timeout: time.Minute}
		for {
			select {
			case <-stop:
				return
			default:
			}
			req, _ := http.NewRequest("GET", "http://"+e.HTTP+"/healthz", nil)
			req.Host = "late.test"
			resp, err := c.Do(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			mu.Lock()
			if err != nil {
				failed = append(failed, err.Error())
			} else {
				ok++
			}
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	for _, d := range []struct {
		v         string
		exclusive bool
	}{{"2", false}, {"3", false}, {"4", true}, {"5", true}} {
		write(d.v, d.exclusive)
		e.MustRun("deploy", "--no-confirm")
	}
	close(stop)
	<-done
	if len(failed) != 0 || ok == 0 {
		t.Errorf("requests through four deploys (two switches, two exclusive hand-overs): %d ok, %d failed: %v", ok, len(failed), failed)
	}
}

// TestMaxConnectionsFlag: past `hostel serve --max-connections` a new
// connection is answered 503 with Retry-After, and the daemon serves on
// as connections close.
func TestMaxConnectionsFlag(t *testing.T) {
	e := NewEnv(t)
	e.StartDaemonArgs("--http", "127.0.0.1:0", "--https", "", "--max-connections", "8")
	e.WriteSpec(map[string]any{"services": map[string]any{
		"shop": e.App("shop", map[string]any{"domains": []string{"shop.test"}}),
	}})
	e.MustRun("deploy", "--no-confirm")
	get := func(c net.Conn, br *bufio.Reader) (*http.Response, error) {
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
		}
		return resp, err
	}
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for i := range 9 {
		c, err := net.Dial("tcp", e.HTTP)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
		resp, err := get(c, bufio.NewReader(c))
		switch {
		case i < 8 && (err != nil || resp.StatusCode != 200):
			t.Fatalf("connection %d: %v %v, want 200", i+1, resp, err)
		case i == 8 && (err != nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == ""):
			t.Fatalf("connection 9 past --max-connections 8: %v %v, want 503 with Retry-After", resp, err)
		}
	}
	open[0].Close()
	open = open[1:]
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", e.HTTP)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := get(c, bufio.NewReader(c))
		c.Close()
		if err == nil && resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a connection closed, a new one still gets %v %v", resp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
