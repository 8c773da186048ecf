package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
)

// logFile is a version's log: raw output appended, renamed to .1 (and .1 to
// .2, .2 to .3) when it would grow past max.
type logFile struct {
	path string
	max  int64

	mu   sync.Mutex
	f    *os.File
	size int64
}

func openLog(path string, max int64) (*logFile, error) {
	l := &logFile{path: path, max: max}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *logFile) open() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	l.f, l.size = f, fi.Size()
	return nil
}

// Write appends p, rotating first where a line boundary lets the current file
// stay within max. A single line longer than max gets a file of its own.
func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return 0, os.ErrClosed
	}
	total := len(p)
	for len(p) > 0 {
		n := len(p)
		if l.size+int64(n) > l.max {
			room := l.max - l.size
			k := -1
			if room > 0 {
				k = bytes.LastIndexByte(p[:min(room, int64(len(p)))], '\n')
			}
			switch {
			case k >= 0:
				n = k + 1
			case l.size > 0:
				if err := l.rotate(); err != nil {
					return total - len(p), err
				}
				continue
			default:
				if k := bytes.IndexByte(p, '\n'); k >= 0 {
					n = k + 1
				}
			}
		}
		w, err := l.f.Write(p[:n])
		l.size += int64(w)
		p = p[w:]
		if err != nil {
			return total - len(p), err
		}
	}
	return total, nil
}

func (l *logFile) rotate() error {
	if err := l.f.Close(); err != nil {
		return err
	}
	l.f = nil
	for n := keptLogs - 1; n >= 1; n-- {
		err := os.Rename(fmt.Sprintf("%s.%d", l.path, n), fmt.Sprintf("%s.%d", l.path, n+1))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return err
	}
	return l.open()
}

func (l *logFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
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
