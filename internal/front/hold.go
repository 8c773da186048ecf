package front

import (
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
)

// This file holds requests on the net/http path while their backend's
// gate is closed (its version sleeps, wakes or is paused: the router
// core's sleep.go). A held request's body is read meanwhile — in memory
// up to SpoolMemory, then into a temporary file — so that a client's
// upload is not stalled by the wake. The request goes to the app the
// moment it is released: what came meanwhile first, then the rest as the
// client sends it (an upload that streams, or waits for the app's first
// answer, is not held until it ends).

// RetryAfter is the Retry-After, in seconds, of the 503 a held request
// gets when its wake fails or its pause outlasts its bound.
const RetryAfter = 5

// SpoolMemory is how much of a held request's body is kept in memory;
// the rest goes to a temporary file.
const SpoolMemory = 1 << 20

const heldMessage = "hostel: the service is not available right now; try again"

// hold waits for b's gate, which the request's acquire found closed, to
// open and takes the request's slot, reading its body into a spool
// meanwhile.
func (b *Backend) hold(req *http.Request) (slot, error) {
	var sp *spool
	if req.Body != nil && req.Body != http.NoBody && req.ContentLength != 0 {
		sp = newSpool()
		go sp.fill(req.Body)
	}
	s, err := b.waitAcquire(req.Context(), req.Host, req.RemoteAddr)
	if err != nil {
		if sp != nil {
			sp.Close()
		}
		return slot{}, err
	}
	if sp != nil {
		// The same bytes as the client's body, so its framing
		// (Content-Length or chunked) holds as it is.
		req.Body = &spoolReader{sp: sp}
	}
	return s, nil
}

// refuseHeld answers a held request that is not released: 503 with
// Retry-After, unless the client is gone.
func refuseHeld(w http.ResponseWriter, clientThere bool) {
	if !clientThere {
		return
	}
	w.Header().Set("Retry-After", strconv.Itoa(RetryAfter))
	w.Header().Set("Connection", "close")
	http.Error(w, heldMessage, http.StatusServiceUnavailable)
}

// spool is a held request's body as it comes: memory first, then a
// temporary file; a reader follows it from its start.
type spool struct {
	mu     sync.Mutex
	more   *sync.Cond // broadcast as bytes come, the body ends or the spool closes
	mem    []byte
	file   *os.File
	n      int64 // bytes spooled
	end    error // io.EOF once the body ended, or why reading it failed
	closed bool
}

func newSpool() *spool {
	sp := &spool{}
	sp.more = sync.NewCond(&sp.mu)
	return sp
}

// fill reads body into the spool until it ends, fails, or the spool is
// closed.
func (sp *spool) fill(body io.Reader) {
	// Small at first (most bodies are), larger as reads fill it: a herd
	// of held requests costs little.
	buf := make([]byte, 512)
	for {
		m, err := body.Read(buf)
		sp.mu.Lock()
		if sp.closed {
			sp.mu.Unlock()
			return
		}
		if m > 0 {
			if werr := sp.appendLocked(buf[:m]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			sp.end = err
		}
		sp.more.Broadcast()
		sp.mu.Unlock()
		if err != nil {
			return
		}
		if m == len(buf) && len(buf) < 32<<10 {
			buf = make([]byte, 2*len(buf)) // its bytes are spooled
		}
	}
}

// appendLocked adds p to the spool. sp.mu must be held.
func (sp *spool) appendLocked(p []byte) error {
	if room := SpoolMemory - len(sp.mem); room > 0 {
		k := min(room, len(p))
		sp.mem = append(sp.mem, p[:k]...)
		sp.n += int64(k)
		p = p[k:]
	}
	if len(p) == 0 {
		return nil
	}
	if sp.file == nil {
		f, err := os.CreateTemp("", "hostel-held-*")
		if err != nil {
			return err
		}
		// Unlinked at once: the descriptor keeps it, and nothing is left
		// behind whatever happens to the daemon.
		os.Remove(f.Name())
		sp.file = f
	}
	k, err := sp.file.Write(p)
	sp.n += int64(k)
	return err
}

// Close removes what the spool holds; its reader then fails.
func (sp *spool) Close() error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.closed {
		return nil
	}
	sp.closed, sp.mem = true, nil
	sp.more.Broadcast()
	if sp.file != nil {
		return sp.file.Close()
	}
	return nil
}

// spoolReader reads a spool from its start, waiting for what has not
// come yet. Closing it closes the spool.
type spoolReader struct {
	sp  *spool
	off int64
}

func (r *spoolReader) Read(p []byte) (int, error) {
	sp := r.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for r.off == sp.n && sp.end == nil && !sp.closed {
		sp.more.Wait()
	}
	switch {
	case sp.closed:
		return 0, http.ErrBodyReadAfterClose
	case r.off < int64(len(sp.mem)):
		n := copy(p, sp.mem[r.off:])
		r.off += int64(n)
		return n, nil
	case r.off < sp.n:
		k := min(int64(len(p)), sp.n-r.off)
		n, err := sp.file.ReadAt(p[:k], r.off-int64(len(sp.mem)))
		r.off += int64(n)
		if n > 0 {
			err = nil
		}
		return n, err
	}
	return 0, sp.end
}

func (r *spoolReader) Close() error { return r.sp.Close() }
