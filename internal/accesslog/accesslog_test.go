package accesslog

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"hostel/internal/front"
	"hostel/internal/spec"
)

var (
	prod    = spec.Key("api", "111111111111")
	preview = spec.InstanceKey("api", "222222222222", "pr-7")
)

func readLines(t *testing.T, path string) []Line {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []Line
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l Line
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	return lines
}

// TestLinesGoToTheirInstanceFile: each request is one JSON line, in its
// service's file for its environment, without the query.
func TestLinesGoToTheirInstanceFile(t *testing.T) {
	root := t.TempDir()
	l := New(root, 0)
	l.Version(prod).Log(20*time.Millisecond, &front.Outcome{Status: 404, Bytes: 9, Method: "GET",
		Host: "api.example", Target: "/x?token=secret", Remote: "127.0.0.1:5000"})
	l.Version(preview).Log(time.Millisecond, &front.Outcome{Status: 200, Method: "POST", Host: "api.pr-7.hostel.internal", Target: "/", Held: true})
	l.Close()

	got := readLines(t, filepath.Join(root, "logs", "api", "access.log"))
	if len(got) != 1 {
		t.Fatalf("production's log: %d lines, want 1", len(got))
	}
	want := Line{Time: got[0].Time, Service: "api", Env: "production", Version: "111111111111", Host: "api.example",
		Method: "GET", Path: "/x", Status: 404, Bytes: 9, Duration: 0.02, Client: "127.0.0.1:5000"}
	if got[0] != want {
		t.Errorf("got %+v\nwant %+v", got[0], want)
	}
	if age := time.Since(got[0].Time); age < 20*time.Millisecond || age > time.Minute {
		t.Errorf("time %v: want the request's start", got[0].Time)
	}
	pv := readLines(t, filepath.Join(root, "logs", "api", "access@pr-7.log"))
	if len(pv) != 1 || pv[0].Env != "pr-7" || !pv[0].Held || pv[0].Version != "222222222222" {
		t.Errorf("preview's log: %+v", pv)
	}
	if l.Dropped() != 0 {
		t.Errorf("Dropped = %d, want 0", l.Dropped())
	}
}

// TestStuckDiskNeverBlocksARequest: with the writer stuck (its file is a
// FIFO nobody reads, so its open never returns), logging never waits and
// what does not fit the queue is counted as dropped.
func TestStuckDiskNeverBlocksARequest(t *testing.T) {
	root := t.TempDir()
	path := Path(root, "api", "")
	os.MkdirAll(filepath.Dir(path), 0o750)
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	l := New(root, 0)
	w := l.Version(prod)
	// More than a batch beyond the queue.
	const extra = 2 * queueLen
	start := time.Now()
	for range queueLen + extra {
		w.Log(time.Millisecond, &front.Outcome{Status: 200, Method: "GET", Host: "h", Target: "/"})
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("logging %d lines took %v", queueLen+extra, d)
	}
	// The writer took a batch (or none yet) and got stuck in open; the
	// queue is full, and what did not fit was dropped.
	if n := w.f.queued(); n != queueLen {
		t.Errorf("queue holds %d lines, want it full (%d)", n, queueLen)
	}
	if got := l.Dropped(); got <= 0 || got > extra {
		t.Errorf("Dropped = %d, want 1 to %d", got, extra)
	}
	// Unstick it: read the FIFO, then close.
	r, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := r.Read(buf); err != nil {
				return
			}
		}
	}()
	l.Close()
	r.Close()
}

// TestFullDiskCountsDrops: a write that fails loses its lines, counted.
func TestFullDiskCountsDrops(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	root := t.TempDir()
	path := Path(root, "api", "")
	os.MkdirAll(filepath.Dir(path), 0o750)
	if err := os.Symlink("/dev/full", path); err != nil {
		t.Fatal(err)
	}
	l := New(root, 0)
	for range 10 {
		l.Version(prod).Log(time.Millisecond, &front.Outcome{Status: 200})
	}
	l.Close()
	if got := l.Dropped(); got != 10 {
		t.Errorf("Dropped = %d, want 10", got)
	}
}

// TestRotated: the access log is rotated as the versions' logs are.
func TestRotated(t *testing.T) {
	root := t.TempDir()
	l := New(root, 4<<10)
	w := l.Version(prod)
	// Batches of about 6 KB: past max, short of the 2 × max past which a
	// rotation drops rather than copies.
	for range 4 {
		for range 30 {
			w.Log(time.Millisecond, &front.Outcome{Status: 200, Method: "GET", Host: "api.example", Target: "/some/path"})
		}
		time.Sleep(2 * batchWait)
	}
	l.Close()
	path := Path(root, "api", "")
	if _, err := os.Stat(path + ".1"); err != nil {
		t.Fatalf("no rotated file: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 2*(4<<10)+(256<<10) {
		t.Errorf("access.log is %d bytes after rotation", fi.Size())
	}
}

// BenchmarkLog is what the access log adds to a request: its line made
// and queued (or dropped, when the writer falls behind).
func BenchmarkLog(b *testing.B) {
	l := New(b.TempDir(), 0)
	defer l.Close()
	w := l.Version(prod)
	o := &front.Outcome{Status: 200, Bytes: 1234, Method: "GET", Host: "api.example", Target: "/p?q=1", Remote: "127.0.0.1:40000"}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w.Log(300*time.Microsecond, o)
		}
	})
	b.ReportMetric(float64(l.Dropped())/float64(b.N), "dropped/op")
}

// TestLineIsJSON: appendLine writes what encoding/json writes of a Line,
// whatever bytes the client sent.
func TestLineIsJSON(t *testing.T) {
	for _, s := range []string{"plain", `q"uote\back`, "ctl\x00\x1f\n\t", "ünï€ode", "bad\xff\xfeutf8", "<html>&", "\u2028"} {
		line := Line{Time: time.Date(2026, 12, 5, 4, 0, 0, 123456789, time.UTC), Service: "api", Env: "production",
			Version: "0123456789ab", Host: s, Method: "GET", Path: s, Status: 200, Bytes: 12, Duration: 0.000301, Client: s, Held: true}
		got := appendLine(nil, line)
		var back Line
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%q: %s is not JSON: %v", s, got, err)
		}
		want, _ := json.Marshal(line)
		var wantBack Line
		json.Unmarshal(want, &wantBack)
		if back != wantBack {
			t.Errorf("%q: decodes to %+v, want %+v", s, back, wantBack)
		}
	}
}

// BenchmarkAppendLine is the writer's work per line, before the write.
func BenchmarkAppendLine(b *testing.B) {
	line := Line{Time: time.Now(), Service: "api", Env: "production", Version: "0123456789ab", Host: "api.example",
		Method: "GET", Path: "/some/path", Status: 200, Bytes: 1234, Duration: 0.000301, Client: "127.0.0.1:40000"}
	var buf []byte
	for b.Loop() {
		buf = appendLine(buf[:0], line)
	}
}
