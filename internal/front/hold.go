package front

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"strconv"
)

// This file holds requests on the net/http path while their backend's
// gate is closed (its version sleeps, wakes or is paused: the router
// core's sleep.go). A held request's body is read meanwhile — in memory
// up to SpoolMemory, then into a temporary file — so that a client's
// upload is not stalled by the wake, and the request goes to the app
// whole the moment it is released.

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
	spooled := make(chan error, 1)
	if req.Body != nil && req.Body != http.NoBody && req.ContentLength != 0 {
		sp = &spool{}
		go func() { spooled <- sp.fill(req.Body) }()
	} else {
		spooled <- nil
	}
	s, err := b.waitAcquire(req.Context())
	if err != nil {
		// The body's reader ends when the request does; the spool goes
		// with it.
		go func() {
			<-spooled
			if sp != nil {
				sp.Close()
			}
		}()
		return slot{}, err
	}
	if err := <-spooled; err != nil {
		s.release()
		sp.Close()
		return slot{}, err
	}
	if sp != nil {
		body, n, err := sp.reader()
		if err != nil {
			s.release()
			sp.Close()
			return slot{}, err
		}
		req.Body, req.ContentLength, req.TransferEncoding = body, n, nil
		req.Header.Del("Transfer-Encoding")
		req.Header.Set("Content-Length", strconv.FormatInt(n, 10))
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

// spool is a held request's body: memory first, then a temporary file.
type spool struct {
	mem  bytes.Buffer
	file *os.File
	n    int64
}

// fill reads body to its end into the spool.
func (sp *spool) fill(body io.Reader) error {
	lim := &io.LimitedReader{R: body, N: SpoolMemory}
	n, err := sp.mem.ReadFrom(lim)
	sp.n = n
	if err != nil {
		return err
	}
	if lim.N > 0 {
		return nil // all of it fit in memory
	}
	if sp.file, err = os.CreateTemp("", "hostel-held-*"); err != nil {
		return err
	}
	// Unlinked at once: the descriptor keeps it, and nothing is left
	// behind whatever happens to the daemon.
	os.Remove(sp.file.Name())
	m, err := io.Copy(sp.file, body)
	sp.n += m
	return err
}

// reader returns the spooled body from its start, and its length.
func (sp *spool) reader() (io.ReadCloser, int64, error) {
	if sp.file == nil {
		return io.NopCloser(&sp.mem), sp.n, nil
	}
	if _, err := sp.file.Seek(0, io.SeekStart); err != nil {
		return nil, 0, err
	}
	return spoolReader{Reader: io.MultiReader(&sp.mem, sp.file), sp: sp}, sp.n, nil
}

// Close removes what the spool holds.
func (sp *spool) Close() error {
	if sp.file != nil {
		return sp.file.Close()
	}
	return nil
}

type spoolReader struct {
	io.Reader
	sp *spool
}

func (r spoolReader) Close() error { return r.sp.Close() }
