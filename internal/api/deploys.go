package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// The progress of the deploys and rollbacks under way is streamed to the
// client that asked for each; GET /v1/deploys?follow=1 streams it to
// anyone else who watches (the dashboard): first what the operations
// running now (and the last one that ended) said so far, then every event
// as it comes.

// DeployEvent is one line of GET /v1/deploys: a deploy's or a rollback's
// start, a progress line of it, or its end.
type DeployEvent struct {
	// Op numbers the operation, from 1 at the daemon's start.
	Op uint64 `json:"op"`
	// Kind is "deploy" or "rollback".
	Kind string    `json:"kind"`
	Time time.Time `json:"time"`
	// Start is set on an operation's first event, End on its last.
	Start bool `json:"start,omitempty"`
	End   bool `json:"end,omitempty"`
	// Progress is a progress line, as the client that asked got it; ""
	// on the first and last events.
	Progress string `json:"progress,omitempty"`
	// Generation is the generation live when the operation ended, and
	// Error why it failed ("" when it went through); set with End.
	Generation uint64 `json:"generation,omitempty"`
	Error      string `json:"error,omitempty"`
}

// deployLogMax bounds the events a deployLog keeps: a deploy that says
// more has its oldest lines dropped from the backlog (followers already
// had them).
const deployLogMax = 1000

// followerBuffer is how many events a follower may lag behind before it
// is dropped (its stream ends; it may follow again).
const followerBuffer = 256

// deployLog keeps the events of the operations running now and of the
// last one that ended, and passes each new one to the followers. Its
// methods are safe on a nil *deployLog, which keeps nothing.
type deployLog struct {
	mu     sync.Mutex
	lastOp uint64
	// events are in the order they came; running holds the operations
	// not ended, lastEnded the one that ended last.
	events    []DeployEvent
	running   map[uint64]bool
	lastEnded uint64
	followers map[chan DeployEvent]struct{}
}

func newDeployLog() *deployLog {
	return &deployLog{running: map[uint64]bool{}, followers: map[chan DeployEvent]struct{}{}}
}

// begin records the start of an operation of kind and returns its number.
func (l *deployLog) begin(kind string) uint64 {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastOp++
	l.running[l.lastOp] = true
	l.addLocked(DeployEvent{Op: l.lastOp, Kind: kind, Time: time.Now().UTC(), Start: true})
	return l.lastOp
}

// add records ev of a running operation.
func (l *deployLog) add(ev DeployEvent) {
	if l == nil {
		return
	}
	ev.Time = time.Now().UTC()
	l.mu.Lock()
	defer l.mu.Unlock()
	if ev.End {
		delete(l.running, ev.Op)
		l.lastEnded = ev.Op
		// What ended before it is no longer of interest to a newcomer.
		kept := l.events[:0]
		for _, e := range l.events {
			if l.running[e.Op] || e.Op == ev.Op {
				kept = append(kept, e)
			}
		}
		clear(l.events[len(kept):])
		l.events = kept
	}
	l.addLocked(ev)
}

func (l *deployLog) addLocked(ev DeployEvent) {
	if len(l.events) == deployLogMax {
		l.events = append(l.events[:0], l.events[1:]...)
	}
	l.events = append(l.events, ev)
	for ch := range l.followers {
		select {
		case ch <- ev:
		default: // too far behind: its stream ends
			delete(l.followers, ch)
			close(ch)
		}
	}
}

// follow returns the backlog and a channel of what comes after it,
// closed when the follower falls behind; stop ends the following.
func (l *deployLog) follow() (backlog []DeployEvent, ch chan DeployEvent, stop func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch = make(chan DeployEvent, followerBuffer)
	l.followers[ch] = struct{}{}
	return append([]DeployEvent(nil), l.events...), ch, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if _, ok := l.followers[ch]; ok {
			delete(l.followers, ch)
			close(ch)
		}
	}
}

// stream runs op, sending its progress lines and then one last Event with
// its result, its error, or both, as newline-delimited Events; l records
// them as an operation of kind.
func (l *deployLog) stream(w http.ResponseWriter, kind string, op func(progress func(string)) (*DeployResult, error)) {
	w.Header().Set("Content-Type", ndjson)
	var mu sync.Mutex
	enc := json.NewEncoder(w)
	fl, _ := w.(http.Flusher)
	send := func(ev Event) {
		mu.Lock()
		defer mu.Unlock()
		enc.Encode(ev)
		if fl != nil {
			fl.Flush()
		}
	}
	n := l.begin(kind)
	res, err := op(func(line string) {
		l.add(DeployEvent{Op: n, Kind: kind, Progress: line})
		send(Event{Progress: line})
	})
	last := Event{Result: res}
	if err != nil {
		last.Error = toError(err)
		if res != nil {
			res.Error = last.Error.Message
		}
	}
	if last.Error == nil && last.Result == nil {
		last.Error = &Error{Kind: KindFailed, Message: "internal error: the operation returned neither a result nor an error"}
	}
	end := DeployEvent{Op: n, Kind: kind, End: true}
	if res != nil {
		end.Generation = res.Generation
	}
	if last.Error != nil {
		end.Error = last.Error.Message
	}
	l.add(end)
	send(last)
}

// stream is deployLog.stream recording nothing.
func stream(w http.ResponseWriter, op func(progress func(string)) (*DeployResult, error)) {
	(*deployLog)(nil).stream(w, "", op)
}

// handleDeploys serves GET /v1/deploys: l's backlog, then, with follow=1,
// each event as it comes until the client goes or falls behind.
func handleDeploys(mux *http.ServeMux, l *deployLog) {
	mux.HandleFunc("GET /v1/deploys", func(w http.ResponseWriter, r *http.Request) {
		backlog, ch, stop := l.follow()
		defer stop()
		w.Header().Set("Content-Type", ndjson)
		enc := json.NewEncoder(w)
		rc := http.NewResponseController(w)
		for _, ev := range backlog {
			enc.Encode(ev)
		}
		rc.Flush()
		if r.URL.Query().Get("follow") != "1" {
			return
		}
		for {
			select {
			case <-r.Context().Done():
				return
			case ev, ok := <-ch:
				if !ok {
					return
				}
				if enc.Encode(ev) != nil || rc.Flush() != nil {
					return
				}
			}
		}
	})
}

// FollowDeploys calls fn with each event of GET /v1/deploys?follow=1: what
// the operations under way (and the last one that ended) said so far,
// then what they say next, until ctx ends or the daemon ends the stream.
func (c *Client) FollowDeploys(ctx context.Context, fn func(DeployEvent)) error {
	resp, err := c.do(ctx, http.MethodGet, "/v1/deploys?follow=1", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var ev DeployEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("bad answer from daemon: %w", err)
		}
		fn(ev)
	}
	if ctx.Err() != nil {
		return nil
	}
	return sc.Err()
}
