package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// This file holds requests on the net/http path while their backend's
// gate is closed (its version sleeps, wakes or is paused: the router
// core's sleep.go). A held request's body is read meanwhile, so that a
// client's upload is not stalled by the wake — but only so much of it
// (HoldLimits): a few pieces in memory, from a budget all held requests
// share, the rest into a temporary file, within a disk budget they share
// too. A body that outgrows what may be held for it is answered 413, one
// that finds no room (budget or disk full) 503, while it is still held:
// the app never gets a truncated body.
//
// The request goes to the app the moment it is released, and the reading
// ahead stops then: what was spooled goes first, then the rest is read
// only as the app reads it, as for a running app (an upload that streams,
// or waits for the app's first answer, is not held until it ends).

// RetryAfter is the Retry-After, in seconds, of the 503 a held request
// gets when its wake fails, its pause outlasts its bound or its body
// finds no room.
const RetryAfter = 5

// HoldLimits bound what the bodies of held requests take while they wait.
type HoldLimits struct {
	// Body bounds how much of one request's body is read ahead of the
	// app while the request is held: a body that outgrows it meanwhile
	// is answered 413 (once released, a body streams to the app whatever
	// its size). 0 means DefaultHeldBody.
	Body int64
	// Memory bounds the memory the bodies of all held requests take
	// together, HeldRequestMemory at most each: past it, bodies go
	// straight to a temporary file. 0 means DefaultHeldMemory.
	Memory int64
	// Disk bounds the temporary files of all held requests' bodies
	// together: a held request whose body would pass it is answered 503
	// with Retry-After, as is one whose file meets a full disk. 0 means
	// DefaultHeldDisk.
	Disk int64
	// Dir is where the temporary files are made (and at once unlinked);
	// "" means os.TempDir(). The daemon uses ROOT/tmp: /tmp may be a
	// tmpfs, whose files are memory.
	Dir string
}

// The defaults of HoldLimits. nginx reads bodies up to 1 MiB
// (client_max_body_size), in memory up to 16 KiB per request
// (client_body_buffer_size) and the rest into a temporary file.
const (
	DefaultHeldBody   = 64 << 20
	DefaultHeldMemory = 16 << 20
	DefaultHeldDisk   = 1 << 30
)

// HeldRequestMemory is the most one held request's body takes in memory,
// in pieces of spoolChunk taken from the shared budget as it comes.
const HeldRequestMemory = 4 * spoolChunk

// spoolChunk is the size of a spool's pieces of memory.
const spoolChunk = 16 << 10

// spoolFileBuffer is the size of the buffer through which a spool writes
// its file (nginx reads a body in pieces of 8 or 16 KiB): every held
// upload past memory keeps one while it waits for its client.
const spoolFileBuffer = 8 << 10

var (
	spoolChunks      = sync.Pool{New: func() any { b := make([]byte, spoolChunk); return &b }}
	spoolFileBuffers = sync.Pool{New: func() any { b := make([]byte, spoolFileBuffer); return &b }}
)

const heldMessage = "hostel: the service is not available right now; try again"

// Why a held request was answered before it was released: the
// ServeHTTP of Backend tells them apart.
var (
	// errHeldTooLarge: its body outgrew HoldLimits.Body (413).
	errHeldTooLarge = errors.New("body larger than what may be held")
	// errHeldNoRoom: its body found no room, past the disk budget or on
	// a full disk (503).
	errHeldNoRoom = errors.New("no room to hold the body")
)

// heldBodyError is a held request's body that failed to come (stalled,
// broken framing, the client gone): the client's fault.
type heldBodyError struct{ err error }

func (e heldBodyError) Error() string { return "reading the body: " + e.err.Error() }
func (e heldBodyError) Unwrap() error { return e.err }

// holdBudget is what the held requests of a Proxy share.
type holdBudget struct {
	lim  HoldLimits   // defaults applied
	mem  atomic.Int64 // bytes of memory their spools took
	disk atomic.Int64 // bytes their files took
	// create makes a spool's file: a temporary file in lim.Dir, unlinked
	// (a test sets it to a full disk).
	create func() (*os.File, error)
}

func newHoldBudget(lim HoldLimits) *holdBudget {
	if lim.Body <= 0 {
		lim.Body = DefaultHeldBody
	}
	if lim.Memory <= 0 {
		lim.Memory = DefaultHeldMemory
	}
	if lim.Disk <= 0 {
		lim.Disk = DefaultHeldDisk
	}
	hb := &holdBudget{lim: lim}
	hb.create = func() (*os.File, error) {
		f, err := os.CreateTemp(lim.Dir, "hostel-held-*")
		if err != nil {
			return nil, err
		}
		// Unlinked at once: the descriptor keeps it, and nothing is left
		// behind whatever happens to the daemon.
		os.Remove(f.Name())
		return f, nil
	}
	return hb
}

// take reserves n bytes of what c counts, up to limit; false if there is
// not that much left.
func take(c *atomic.Int64, n, limit int64) bool {
	if c.Add(n) > limit {
		c.Add(-n)
		return false
	}
	return true
}

// heldUsage is what the held requests' bodies take now, in memory and on
// disk.
func (p *Proxy) heldUsage() (mem, disk int64) { return p.held.mem.Load(), p.held.disk.Load() }

// lingerTime bounds how long the rest of a refused held request's body is
// read and thrown away after its answer (nginx's lingering_time is 30 s):
// closing a connection with a client's bytes unread resets it, and a
// client still sending would lose the answer with it.
const lingerTime = 5 * time.Second

// hold waits for b's gate, which the request's acquire found closed, to
// open and takes the request's slot, reading its body into a spool
// meanwhile. A released request's body is the spool's reader, and the
// spool is returned for the caller to close. Otherwise the error says
// why the request is answered instead (answerHeld), and the spool, if
// any, goes to answerHeld.
//
// A request with "Expect: 100-continue" is not read ahead: its client
// sends the body once the app asks for it, as for a running app.
func (b *Backend) hold(req *http.Request) (slot, *spool, error) {
	if req.Body == nil || req.Body == http.NoBody || req.ContentLength == 0 || len(req.Header["Expect"]) > 0 {
		s, err := b.waitAcquire(req.Context(), req.Host, req.RemoteAddr)
		return s, nil, err
	}
	ctx, stop := context.WithCancelCause(req.Context())
	defer stop(nil)
	sp := newSpool(b.p.held, req.Body, stop)
	go sp.fill()
	s, err := b.waitAcquire(ctx, req.Host, req.RemoteAddr)
	if err == nil {
		// The body may have failed to be held at the very moment the
		// gate opened: the request is answered then, never sent.
		if err = sp.release(); err != nil {
			s.release()
		}
	} else if ferr := sp.settle(); ferr != nil {
		err = ferr // which ended the wait
	}
	if err != nil {
		return slot{}, sp, err
	}
	// The same bytes as the client's body, so its framing
	// (Content-Length or chunked) holds as it is.
	req.Body = &spoolReader{sp: sp}
	return s, sp, nil
}

// answerHeld answers a held request that was not released because of err,
// unless the client is gone, and closes its spool (nil: none). A client
// that may still be sending its body gets the answer at once, and the
// rest of its body is read and thrown away for up to lingerTime.
func answerHeld(w http.ResponseWriter, req *http.Request, cb *clientBody, sp *spool, err error) {
	var be heldBodyError
	// A failed read of the body cancels the request's context too: the
	// client is gone only if that is not why.
	gone := req.Context().Err() != nil && !errors.As(err, &be)
	if sp != nil {
		defer sp.Close()
		until := time.Now().Add(lingerTime)
		if gone || errors.As(err, &be) {
			until = aLongTimeAgo // nobody to answer, or nothing more comes
		}
		if cb != nil {
			// A read of the body that waits for the client ends then.
			cb.cutOff(until)
		}
		defer sp.linger(until)
	}
	switch {
	case gone:
	case errors.Is(err, errHeldTooLarge):
		answerWhole(w, http.StatusRequestEntityTooLarge, "hostel: the request body is too large to be held while the service starts; try again")
	case errors.Is(err, errHeldNoRoom):
		w.Header().Set("Retry-After", strconv.Itoa(RetryAfter))
		answerWhole(w, http.StatusServiceUnavailable, "hostel: no room to hold the request body right now; try again")
	case errors.As(err, &be):
		// The client stalled or broke the body's framing.
		code := http.StatusBadRequest
		if cb != nil && cb.failed() != 0 {
			code = cb.failed()
		}
		refuse(w, code)
	case sp != nil:
		w.Header().Set("Retry-After", strconv.Itoa(RetryAfter))
		answerWhole(w, http.StatusServiceUnavailable, heldMessage)
	default:
		refuseHeld(w, heldMessage, true)
	}
	if sp != nil && !gone {
		// Out before the lingering.
		http.NewResponseController(w).Flush()
	}
}

// answerWhole answers as http.Error does, with a Content-Length and
// closing the connection: the answer is complete before the handler
// returns (an answer flushed without one would be chunked, and end only
// then).
func answerWhole(w http.ResponseWriter, code int, msg string) {
	msg += "\n"
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(msg)))
	h.Set("Connection", "close")
	w.WriteHeader(code)
	io.WriteString(w, msg)
}

// refuseHeld answers a held request that is not released: 503 with
// Retry-After, unless the client is gone.
func refuseHeld(w http.ResponseWriter, msg string, clientThere bool) {
	if !clientThere {
		return
	}
	w.Header().Set("Retry-After", strconv.Itoa(RetryAfter))
	w.Header().Set("Connection", "close")
	http.Error(w, msg, http.StatusServiceUnavailable)
}

// spool is a held request's body as it comes: a few pieces of memory
// first, then a temporary file; once the request is released, what the
// read under way brings, and then the body itself. A reader follows it
// from its start. One goroutine, fill, reads the body while the request
// is held; after that only the reader does.
type spool struct {
	hb   *holdBudget
	body io.Reader
	// stop ends the request's hold when the spool fails.
	stop context.CancelCauseFunc

	mu     sync.Mutex
	more   *sync.Cond // broadcast as bytes come, the body ends, the spool fails or closes
	chunks []*[]byte  // the first bytes, spoolChunk each, all full but the last
	mem    int64      // bytes in chunks
	file   *os.File   // the bytes after them, once memory was not to be had
	disk   int64      // bytes in file
	took   int64      // bytes of the disk budget taken
	buf    *[]byte    // fill's buffer for the file
	tail   []byte     // in buf: what the read under way at the release brought
	end    error      // io.EOF once the body ended, or why reading it failed; nil while it goes on
	failed error      // why the request may not be held: it is answered, never released
	// released: the request went to the app; fill starts no read.
	released bool
	// discard: the request is answered without its body, whose rest fill
	// reads and throws away (linger).
	discard bool
	reading bool          // fill is in a read of the body
	settled bool          // settle waited long enough
	filling bool          // fill has not returned
	filled  chan struct{} // closed when fill returns
	closed  bool
	freed   bool // memory, file and budgets given back
}

func newSpool(hb *holdBudget, body io.Reader, stop context.CancelCauseFunc) *spool {
	sp := &spool{hb: hb, body: body, stop: stop, filling: true, filled: make(chan struct{})}
	sp.more = sync.NewCond(&sp.mu)
	return sp
}

// fill reads the body into the spool until it ends or fails, the request
// is released or the spool closes; once the request is answered without
// it, fill reads the rest and throws it away.
func (sp *spool) fill() {
	defer close(sp.filled)
	var scratch []byte
	for {
		sp.mu.Lock()
		p, inMem := sp.nextLocked()
		if p == nil && sp.discard && !sp.closed && sp.end == nil {
			// Nothing of the body is needed any more: what it took
			// goes back now, not after the lingering.
			sp.freeLocked()
			if scratch == nil {
				scratch = make([]byte, 4<<10)
			}
			p = scratch
		}
		sp.reading = p != nil
		sp.mu.Unlock()
		if p == nil {
			break
		}
		n, err := sp.body.Read(p)
		sp.mu.Lock()
		sp.reading = false
		sp.more.Broadcast()
		switch {
		case sp.closed:
		case sp.discard:
			if err != nil {
				sp.end = err
			}
		default:
			sp.addLocked(p[:n], inMem, err)
			sp.more.Broadcast()
		}
		sp.mu.Unlock()
	}
	sp.mu.Lock()
	sp.filling = false
	if sp.closed {
		sp.freeLocked()
	}
	sp.more.Broadcast()
	sp.mu.Unlock()
}

// nextLocked returns the buffer fill reads into next, and whether it is
// the spool's memory; nil if it is to stop spooling. sp.mu must be held.
func (sp *spool) nextLocked() (p []byte, inMem bool) {
	if sp.closed || sp.released || sp.discard || sp.failed != nil || sp.end != nil {
		return nil, false
	}
	if sp.file == nil {
		if k := int64(len(sp.chunks)); sp.mem < k*spoolChunk {
			return (*sp.chunks[k-1])[sp.mem-(k-1)*spoolChunk:], true
		}
		if len(sp.chunks) < HeldRequestMemory/spoolChunk && take(&sp.hb.mem, spoolChunk, sp.hb.lim.Memory) {
			c := spoolChunks.Get().(*[]byte)
			sp.chunks = append(sp.chunks, c)
			return *c, true
		}
	}
	if sp.buf == nil {
		sp.buf = spoolFileBuffers.Get().(*[]byte)
	}
	return *sp.buf, false
}

// addLocked adds what a read of the body brought, p (in the spool's
// memory if inMem) and err. While the request is held, bytes beyond what
// may be held fail the spool, and so does a body that fails. sp.mu must
// be held.
func (sp *spool) addLocked(p []byte, inMem bool, err error) {
	n := int64(len(p))
	switch {
	case n == 0:
	case !sp.released && sp.mem+sp.disk+n > sp.hb.lim.Body:
		sp.failLocked(errHeldTooLarge)
		return
	case inMem:
		sp.mem += n
	case sp.released:
		// Read as the request was released: kept as it is, not written
		// to a file that could be full — the request is on its way.
		sp.tail = p
	default:
		if werr := sp.writeLocked(p); werr != nil {
			sp.failLocked(werr)
			return
		}
	}
	switch {
	case err == nil:
	case err == io.EOF || sp.released:
		sp.end = err
	default:
		sp.failLocked(heldBodyError{err})
	}
}

// writeLocked appends p to the spool's file, within the disk budget.
// sp.mu must be held.
func (sp *spool) writeLocked(p []byte) error {
	if sp.file == nil {
		f, err := sp.hb.create()
		if err != nil {
			return fmt.Errorf("%w: %w", errHeldNoRoom, err)
		}
		sp.file = f
	}
	n := int64(len(p))
	if !take(&sp.hb.disk, n, sp.hb.lim.Disk) {
		return fmt.Errorf("%w: past the disk budget of held bodies (%d bytes)", errHeldNoRoom, sp.hb.lim.Disk)
	}
	sp.took += n
	k, err := sp.file.Write(p)
	sp.disk += int64(k)
	if err != nil {
		// ENOSPC, most likely: the request is answered, never sent
		// with a part of its body.
		return fmt.Errorf("%w: %w", errHeldNoRoom, err)
	}
	return nil
}

// failLocked records why the request may not be held and ends its hold.
// sp.mu must be held.
func (sp *spool) failLocked(err error) {
	if sp.failed == nil {
		// The request will be answered without its body: what comes of
		// it is thrown away (linger) from now on.
		sp.failed, sp.discard = err, true
		sp.stop(err)
	}
}

// settle returns why the spool failed, nil if it did not, once the read
// of the body under way, if any, has returned (for up to a second): a
// read of the connection that fails (a stalled body) also cancels the
// request's context, which may end the hold before that read returns
// with why.
func (sp *spool) settle() error {
	t := time.AfterFunc(time.Second, func() {
		sp.mu.Lock()
		sp.settled = true
		sp.more.Broadcast()
		sp.mu.Unlock()
	})
	defer t.Stop()
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for sp.reading && !sp.settled {
		sp.more.Wait()
	}
	return sp.failed
}

// release marks the request released, so that fill reads no further
// ahead, and returns why it may not be, if the spool failed.
func (sp *spool) release() error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.failed != nil {
		return sp.failed
	}
	sp.released = true
	return nil
}

// linger has fill read the rest of the body of a request answered without
// it and throw it away, and waits until the body ends, fails (its reads
// are bounded by the caller, clientBody.cutOff) or until.
func (sp *spool) linger(until time.Time) {
	sp.mu.Lock()
	sp.discard = true
	sp.mu.Unlock()
	t := time.NewTimer(time.Until(until))
	defer t.Stop()
	select {
	case <-sp.filled:
	case <-t.C:
	}
}

// Close gives back what the spool holds (once fill has returned, if it
// still reads); its reader then fails.
func (sp *spool) Close() error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.closed {
		return nil
	}
	sp.closed = true
	sp.more.Broadcast()
	if !sp.filling {
		sp.freeLocked()
	}
	return nil
}

// freeLocked gives back the spool's memory, file and budgets. fill must
// have returned. sp.mu must be held.
func (sp *spool) freeLocked() {
	if sp.freed {
		return
	}
	sp.freed = true
	for _, c := range sp.chunks {
		spoolChunks.Put(c)
	}
	sp.hb.mem.Add(-int64(len(sp.chunks)) * spoolChunk)
	sp.chunks = nil
	if sp.buf != nil {
		spoolFileBuffers.Put(sp.buf)
		sp.buf, sp.tail = nil, nil
	}
	if sp.file != nil {
		sp.file.Close()
		sp.file = nil
	}
	sp.hb.disk.Add(-sp.took)
	sp.took = 0
}

// spoolReader reads a released request's spool from its start, waiting
// for what the read under way at the release brings, then the body
// itself. Closing it closes the spool.
type spoolReader struct {
	sp     *spool
	off    int64
	direct bool // the spool is read out and given back: the body follows
}

func (r *spoolReader) Read(p []byte) (int, error) {
	if r.direct {
		return r.sp.body.Read(p)
	}
	sp := r.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for {
		switch off := r.off; {
		case sp.closed:
			return 0, http.ErrBodyReadAfterClose
		case off < sp.mem:
			c := *sp.chunks[off/spoolChunk]
			n := copy(p, c[off%spoolChunk:min(spoolChunk, sp.mem-off/spoolChunk*spoolChunk)])
			r.off += int64(n)
			return n, nil
		case off < sp.mem+sp.disk:
			k := min(int64(len(p)), sp.mem+sp.disk-off)
			n, err := sp.file.ReadAt(p[:k], off-sp.mem)
			r.off += int64(n)
			if n > 0 {
				err = nil
			}
			return n, err
		case off < sp.mem+sp.disk+int64(len(sp.tail)):
			n := copy(p, sp.tail[off-sp.mem-sp.disk:])
			r.off += int64(n)
			return n, nil
		case sp.end != nil:
			return 0, sp.end
		case !sp.filling:
			// Read out, and fill returned on the release: the memory
			// and the file go back now, not when the request ends, and
			// the body is read as the app reads it.
			sp.freeLocked()
			r.direct = true
			sp.mu.Unlock()
			n, err := sp.body.Read(p)
			sp.mu.Lock()
			return n, err
		}
		sp.more.Wait()
	}
}

func (r *spoolReader) Close() error { return r.sp.Close() }
