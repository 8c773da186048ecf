package handover

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The messages a holder and its daemons exchange carry descriptors
// (SCM_RIGHTS); one message carries at most maxRights of them (the
// kernel's limit is 253), so a set of sockets goes in as many as it
// takes:
//
//	holder → daemon, the answer to "take": "sockets+ NAMES\n" with those
//	sockets, for each but the last part, then "sockets NAMES\n" (NAMES
//	joined by ":", one per descriptor of the message);
//	daemon → holder, on its connection, whenever its endpoints change:
//	"endpoints N\n", then "fds\n" messages with N descriptors in all;
//	and, in a cluster, whenever the node's lease is renewed: "fence MS\n",
//	until when (MS milliseconds from now) the node's exclusive instances
//	may run (HoldFence).
//
// A read on a unix stream socket ends after the message that carried
// descriptors: those of a read belong to its last line.
const maxRights = 200

// sendSockets answers "take": fds, named, in parts.
func sendSockets(c *net.UnixConn, fds []int, names []string) error {
	for {
		n := min(len(fds), maxRights)
		head := "sockets "
		if n < len(fds) {
			head = "sockets+ "
		}
		var oob []byte
		if n > 0 {
			oob = syscall.UnixRights(fds[:n]...)
		}
		if _, _, err := c.WriteMsgUnix([]byte(head+strings.Join(names[:n], ":")+"\n"), oob, nil); err != nil {
			return err
		}
		fds, names = fds[n:], names[n:]
		if head == "sockets " {
			return nil
		}
	}
}

// receiveSockets reads a holder's answer to "take": the sockets and their
// names, or ErrHeld. The descriptors it returns with an error are the
// caller's to close.
func receiveSockets(c *net.UnixConn) (fds []int, names []string, err error) {
	r := newRightsReader(c)
	for {
		line, got, err := r.next()
		fds = append(fds, got...)
		if err != nil {
			return fds, nil, err
		}
		if line == "busy" {
			return fds, nil, ErrHeld
		}
		part, more := strings.CutPrefix(line, "sockets+ ")
		if !more {
			var ok bool
			if part, ok = strings.CutPrefix(line, "sockets "); !ok {
				return fds, nil, fmt.Errorf("answered %q", line)
			}
		}
		if part != "" {
			names = append(names, strings.Split(part, ":")...)
		}
		if len(names) != len(fds) {
			return fds, nil, fmt.Errorf("%d sockets named, %d passed", len(names), len(fds))
		}
		if !more {
			return fds, names, nil
		}
	}
}

// HoldEndpoints hands the holder its daemon's connection c reaches copies
// of the endpoints' listening sockets (from Dup), in place of those it
// held: a daemon that dies leaves them open with the rest.
func HoldEndpoints(c net.Conn, fds []int) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return errors.New("holder: not a unix connection")
	}
	uc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	defer uc.SetWriteDeadline(time.Time{})
	if _, err := uc.Write([]byte("endpoints " + strconv.Itoa(len(fds)) + "\n")); err != nil {
		return fmt.Errorf("holder: %w", err)
	}
	for len(fds) > 0 {
		n := min(len(fds), maxRights)
		if _, _, err := uc.WriteMsgUnix([]byte("fds\n"), syscall.UnixRights(fds[:n]...), nil); err != nil {
			return fmt.Errorf("holder: %w", err)
		}
		fds = fds[n:]
	}
	return nil
}

// HoldFence tells the holder its daemon's connection c reaches until
// when, ms milliseconds from now, the node's exclusive instances may run:
// past it with no later word, it stops them (RunHolder's fence).
func HoldFence(c net.Conn, ms int64) error {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	defer c.SetWriteDeadline(time.Time{})
	if _, err := c.Write([]byte("fence " + strconv.FormatInt(max(ms, 0), 10) + "\n")); err != nil {
		return fmt.Errorf("holder: %w", err)
	}
	return nil
}

// follow reads the daemon's messages on c until it ends: the endpoints'
// sockets, which replace those held once all have come, and the bounds
// to fence the node at.
func (h *holder) follow(c net.Conn) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return
	}
	r := newRightsReader(uc)
	var staging []int
	want := -1
	defer func() { CloseAll(staging) }()
	for {
		line, fds, err := r.next()
		if err != nil {
			CloseAll(fds)
			return
		}
		switch {
		case strings.HasPrefix(line, "endpoints "):
			CloseAll(staging)
			staging = nil
			if want, err = strconv.Atoi(strings.TrimPrefix(line, "endpoints ")); err != nil {
				want = -1
			}
		case line == "fds" && want >= 0:
			staging = append(staging, fds...)
			fds = nil
		case strings.HasPrefix(line, "fence "):
			if ms, err := strconv.ParseInt(strings.TrimPrefix(line, "fence "), 10, 64); err == nil && ms >= 0 {
				h.fenceIn(ms)
			}
		}
		CloseAll(fds)
		if want >= 0 && len(staging) >= want {
			h.mu.Lock()
			CloseAll(h.endpoints)
			h.endpoints = staging
			h.mu.Unlock()
			staging, want = nil, -1
		}
	}
}

// rightsReader reads lines from a unix stream socket, each with the
// descriptors that came with it.
type rightsReader struct {
	c     *net.UnixConn
	buf   []byte
	oob   []byte
	lines []string
	rest  string
	fds   []int // of the last line read
}

func newRightsReader(c *net.UnixConn) *rightsReader {
	return &rightsReader{c: c, buf: make([]byte, 4096), oob: make([]byte, syscall.CmsgSpace(4*maxRights))}
}

// next returns the next line (without "\n") and the descriptors that came
// with it.
func (r *rightsReader) next() (string, []int, error) {
	for len(r.lines) == 0 {
		n, oobn, _, _, err := r.c.ReadMsgUnix(r.buf, r.oob)
		fds, perr := parseRights(r.oob[:oobn])
		if err == nil && n == 0 {
			err = net.ErrClosed
		}
		if err == nil {
			err = perr
		}
		if err != nil {
			return "", append(r.fds, fds...), err
		}
		r.rest += string(r.buf[:n])
		lines := strings.Split(r.rest, "\n")
		r.rest = lines[len(lines)-1]
		if len(lines) == 1 {
			r.fds = append(r.fds, fds...) // a line longer than a read: kept for it
			continue
		}
		r.lines = lines[:len(lines)-1]
		r.fds = append(r.fds, fds...)
	}
	line := r.lines[0]
	r.lines = r.lines[1:]
	var fds []int
	if len(r.lines) == 0 {
		fds, r.fds = r.fds, nil // the last line of the read carries them
	}
	return line, fds, nil
}

func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	cmsgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for i := range cmsgs {
		got, err := syscall.ParseUnixRights(&cmsgs[i])
		if err != nil {
			continue
		}
		fds = append(fds, got...)
	}
	return fds, nil
}
