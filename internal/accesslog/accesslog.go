// Package accesslog writes the router's access log: one JSON line per
// request, in a file per service and environment beside the versions'
// logs (ROOT/logs/SERVICE/access.log, access@ENV.log for a preview's own
// instances), rotated as they are (supervisor.Rotator).
//
// A line is written off the request's path: the request appends it to a
// bounded queue, which a goroutine per file empties to the disk in
// batches (gathered for up to batchWait, so that a busy log costs one
// write, and one wake of its writer, per batch rather than per request).
// A full queue (a slow disk) drops the line, and so does a write that
// fails (a full disk): a request is never slowed or failed by its log,
// and what could not be written is counted (Dropped).
package accesslog

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"hostel/internal/front"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

const (
	// queueLen bounds the lines waiting for one file's writer.
	queueLen = 4096
	// batchWait is how long the writer lets lines gather once the first
	// arrives, unless batchLen of them are there sooner.
	batchWait = 50 * time.Millisecond
	batchLen  = 1024
)

// Path is the access log under root of service's instances that
// environment owner owns.
func Path(root, service, owner string) string {
	if owner == "" || owner == spec.DefaultEnv {
		return filepath.Join(root, "logs", service, "access.log")
	}
	return filepath.Join(root, "logs", service, "access@"+owner+".log")
}

// Line is one request in the access log, as written (JSON).
type Line struct {
	// Time is when the request took its slot (it was sent to the app).
	Time    time.Time `json:"time"`
	Service string    `json:"service"`
	Env     string    `json:"env"`
	Version string    `json:"version"`
	// Host is as the client sent it; Path is without the query, which
	// may carry what must not be logged (tokens).
	Host   string `json:"host"`
	Method string `json:"method"`
	Path   string `json:"path"`
	// Status is 0 when no response was sent (the client left first).
	Status int   `json:"status"`
	Bytes  int64 `json:"bytes"`
	// Duration is in seconds.
	Duration float64 `json:"duration"`
	Client   string  `json:"client,omitempty"`
	// Held: the request waited for its version to wake or be resumed.
	Held bool `json:"held"`
}

// Log is the access logs of one daemon. The zero value is not usable;
// call New.
type Log struct {
	root    string
	max     int64
	dropped atomic.Int64
	done    chan struct{}
	closing sync.Once
	wg      sync.WaitGroup

	mu    sync.Mutex
	files map[string]*file // by path
}

// New returns the access logs under root, each rotated past max bytes
// (supervisor.DefaultLogMaxBytes when 0).
func New(root string, max int64) *Log {
	return &Log{root: root, max: max, done: make(chan struct{}), files: map[string]*file{}}
}

// Dropped is how many lines could not be written: their queue was full,
// or the write failed.
func (l *Log) Dropped() int64 { return l.dropped.Load() }

// Close stops the writers once they wrote what is queued. Lines logged
// after are dropped (and counted). Later calls do nothing.
func (l *Log) Close() {
	l.closing.Do(func() { close(l.done) })
	l.wg.Wait()
}

// Version returns the writer of key's lines: its service's and owner's
// file, shared by all its versions.
func (l *Log) Version(key spec.VersionKey) *Writer {
	path := Path(l.root, key.Service(), key.Owner())
	l.mu.Lock()
	defer l.mu.Unlock()
	f, ok := l.files[path]
	if !ok {
		f = &file{l: l, path: path, kick: make(chan struct{}, 1), rot: supervisor.NewRotator(path, l.max)}
		l.files[path] = f
		l.wg.Add(1)
		go f.run()
	}
	v := string(key.Version())
	if i := strings.LastIndexByte(v, '-'); i >= 0 {
		v = v[i+1:]
	}
	return &Writer{f: f, service: key.Service(), env: key.Owner(), version: v}
}

// Writer logs one version's requests.
type Writer struct {
	f                     *file
	service, env, version string
}

// Log queues the line of a request that ended after d, as o says; it
// never waits.
func (w *Writer) Log(d time.Duration, o *front.Outcome) {
	path, _, _ := strings.Cut(o.Target, "?")
	line := Line{Time: time.Now().Add(-d), Service: w.service, Env: w.env, Version: w.version,
		Host: o.Host, Method: o.Method, Path: path, Status: o.Status, Bytes: o.Bytes,
		Duration: d.Seconds(), Client: o.Remote, Held: o.Held}
	w.f.push(line)
}

// file is one access log and its writer goroutine.
type file struct {
	l    *Log
	path string
	rot  *supervisor.Rotator
	// kick wakes the writer: a first line is queued, or a batch is full.
	kick chan struct{}

	mu    sync.Mutex
	queue []Line // lines not taken by the writer yet
	spare []Line // the writer's last batch, for the next queue
}

// push queues line, or drops it when the queue is full.
func (f *file) push(line Line) {
	f.mu.Lock()
	n := len(f.queue)
	if n >= queueLen {
		f.mu.Unlock()
		f.l.dropped.Add(1)
		return
	}
	f.queue = append(f.queue, line)
	f.mu.Unlock()
	if n == 0 || n+1 == batchLen {
		select {
		case f.kick <- struct{}{}:
		default:
		}
	}
}

// take returns the queued lines and gives the storage of done, the last
// batch, to the next queue.
func (f *file) take(done []Line) []Line {
	f.mu.Lock()
	defer f.mu.Unlock()
	lines := f.queue
	f.queue = done[:0]
	return lines
}

// queued is how many lines wait.
func (f *file) queued() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.queue)
}

// run writes what is queued, a batch at a time, until the Log closes.
func (f *file) run() {
	defer f.l.wg.Done()
	var out *os.File
	defer func() {
		if out != nil {
			out.Close()
		}
	}()
	var buf []byte
	var lines []Line
	timer := time.NewTimer(batchWait)
	timer.Stop()
	for closing := false; !closing; {
		select {
		case <-f.kick:
			// Let a batch gather, unless it is full already.
			timer.Reset(batchWait)
			select {
			case <-timer.C:
			case <-f.kick:
				timer.Stop()
			case <-f.l.done:
				timer.Stop()
				closing = true
			}
		case <-f.l.done:
			// What was queued before Close is written; nothing waits.
			closing = true
		}
		lines = f.take(lines)
		if len(lines) == 0 {
			continue
		}
		buf = buf[:0]
		for _, line := range lines {
			buf = appendLine(buf, line)
		}
		if out == nil {
			var err error
			if out, err = open(f.path); err != nil {
				f.l.dropped.Add(int64(len(lines)))
				continue
			}
		}
		if _, err := out.Write(buf); err != nil {
			// A full disk: these lines are lost, counted; the next batch
			// tries again.
			f.l.dropped.Add(int64(len(lines)))
			continue
		}
		f.rot.RotateIfFull()
	}
}

// appendLine appends line as JSON, as encoding/json writes a Line (the
// test says so), without its reflection: the writer makes every line.
func appendLine(buf []byte, line Line) []byte {
	buf = append(buf, `{"time":"`...)
	buf = line.Time.AppendFormat(buf, time.RFC3339Nano)
	buf = append(buf, `","service":`...)
	buf = appendString(buf, line.Service)
	buf = append(buf, `,"env":`...)
	buf = appendString(buf, line.Env)
	buf = append(buf, `,"version":`...)
	buf = appendString(buf, line.Version)
	buf = append(buf, `,"host":`...)
	buf = appendString(buf, line.Host)
	buf = append(buf, `,"method":`...)
	buf = appendString(buf, line.Method)
	buf = append(buf, `,"path":`...)
	buf = appendString(buf, line.Path)
	buf = append(buf, `,"status":`...)
	buf = strconv.AppendInt(buf, int64(line.Status), 10)
	buf = append(buf, `,"bytes":`...)
	buf = strconv.AppendInt(buf, line.Bytes, 10)
	buf = append(buf, `,"duration":`...)
	buf = strconv.AppendFloat(buf, line.Duration, 'g', -1, 64)
	if line.Client != "" {
		buf = append(buf, `,"client":`...)
		buf = appendString(buf, line.Client)
	}
	buf = append(buf, `,"held":`...)
	buf = strconv.AppendBool(buf, line.Held)
	return append(buf, "}\n"...)
}

// appendString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD.
func appendString(buf []byte, s string) []byte {
	const hex = "0123456789abcdef"
	buf = append(buf, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			buf = append(buf, c)
			i++
			continue
		}
		if c < utf8.RuneSelf {
			switch c {
			case '"', '\\':
				buf = append(buf, '\\', c)
			default:
				buf = append(buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, `\ufffd`...)
		} else {
			buf = append(buf, s[i:i+size]...)
		}
		i += size
	}
	return append(buf, '"')
}

// open opens the log at path for appending, making its directory.
func open(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
}
