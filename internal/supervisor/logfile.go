package supervisor

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
)

// logFile is a version's log. The process writes its stdout and stderr to
// it directly (O_APPEND), not through a pipe the daemon reads: a process
// must outlive the daemon, and a pipe whose reader died would kill it with
// SIGPIPE (a log-writer process per service would cost more memory than
// the service). So the supervisor rotates it the way logrotate's
// copytruncate does, but as the process writes rather than on a timer:
// an inotify watch wakes it on every write (through the netpoller, no
// thread held), and once the file passes max, .2 becomes .3, .1 becomes
// .2, the file is copied to .1 and truncated; the process's O_APPEND
// writes go on at the new end. Lines written between the copy and the
// truncate are lost.
//
// A writer faster than the rotation (200 MB in a second) would still make
// one huge .1, or grow the file for as long as a copy takes: once the file
// holds more than twice max when its size is checked, it is truncated
// without a copy, and a line says how many bytes were dropped. So once the
// watch has caught up, a version's logs take at most max (growing) plus
// three rotated files of at most 2 × max each; while a flood runs, the
// growing file may also hold what was written during one check (a few
// milliseconds on an idle machine).
type logFile struct {
	path string
	max  int64

	mu      sync.Mutex // serializes rotations
	dropped int64      // bytes dropped by rotations; guarded by mu
}

// droppedBytes is how many bytes rotations have dropped so far.
func (l *logFile) droppedBytes() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dropped
}

// openLogFile opens path for appending, creating it 0640; the process gets
// the descriptor as its stdout and stderr.
func openLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(0o640); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// rotateIfFull rotates the log when it has grown past max, and reports
// whether it did.
func (l *logFile) rotateIfFull() (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fi, err := os.Stat(l.path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if fi.Size() <= l.max {
		return false, nil
	}
	if size := fi.Size(); size > 2*l.max {
		// A flood outruns any copy: drop it all at once, and say so where
		// the next lines go.
		if err := os.Truncate(l.path, 0); err != nil {
			return false, err
		}
		l.dropped += size
		f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return true, err
		}
		_, err = fmt.Fprintf(f, "hostel: %d bytes of this log dropped: written faster than it can be rotated (%d dropped so far)\n", size, l.dropped)
		return true, errors.Join(err, f.Close())
	}
	for n := keptLogs - 1; n >= 1; n-- {
		err := os.Rename(fmt.Sprintf("%s.%d", l.path, n), fmt.Sprintf("%s.%d", l.path, n+1))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
	}
	src, err := os.Open(l.path)
	if err != nil {
		return false, err
	}
	defer src.Close()
	tmp := l.path + ".1.tmp"
	dst, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return false, err
	}
	var cerr error
	size := fi.Size()
	// Copy what is there, then what was written meanwhile, then truncate
	// at once: the window in which a line can be lost is from the last
	// size check to the truncate. Copying "to the end" of a file a process
	// keeps writing might never end, so the catching up stops at 2 × max.
	var copied int64
	for cerr == nil && copied < size {
		var n int64
		n, cerr = io.CopyN(dst, src, min(size, 2*l.max)-copied)
		copied += n
		if cerr != nil || copied >= 2*l.max {
			break
		}
		if fi, err := src.Stat(); err == nil && fi.Size() > size {
			size = fi.Size()
		}
	}
	if size > copied {
		l.dropped += size - copied // written during the copy, past 2 × max
	}
	if cerr == nil {
		cerr = os.Truncate(l.path, 0)
	}
	if err := errors.Join(cerr, dst.Close()); err != nil {
		os.Remove(tmp)
		return false, err
	}
	return true, os.Rename(tmp, l.path+".1")
}

// removeLogs removes a version's log and its rotated files.
func removeLogs(path string) error {
	var errs []error
	for _, suffix := range []string{"", ".1.tmp", ".1", ".2", ".3"} {
		if err := os.Remove(path + suffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// tailLines returns up to n last lines of the file at path, for messages.
func tailLines(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const window = 4 << 10
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-window, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, window))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if off > 0 && len(lines) > 1 {
		lines = lines[1:] // the first may be cut
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Rotator rotates a log the daemon itself appends to (O_APPEND), as a
// version's log is rotated (logFile): the same copy and truncate, the
// same sizes, the same rotated files (.1 to .3). The access log is one.
type Rotator struct{ l logFile }

// NewRotator returns the Rotator of the log at path, rotated once it
// passes max bytes (DefaultLogMaxBytes when max is 0 or less).
func NewRotator(path string, max int64) *Rotator {
	if max <= 0 {
		max = DefaultLogMaxBytes
	}
	return &Rotator{l: logFile{path: path, max: max}}
}

// RotateIfFull rotates the log when it has grown past its max, and
// reports whether it did.
func (r *Rotator) RotateIfFull() (bool, error) { return r.l.rotateIfFull() }
