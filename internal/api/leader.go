package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
)

// In a cluster one daemon leads the deployment's engine; the others are
// standbys, whose engine changes nothing (deploy.ErrStandby). The CLI may
// talk to any of them: a standby passes each request only the leader can
// carry out to the daemon that leads, over the node-to-node port, and
// relays its answer (internal/daemon, leader.go). What goes to the leader
// is decided here, once, by route.

// leaderRoutes are the routes only the daemon that leads the engine
// carries out: those that change the deployment through it. What reads
// the store (status, generations, envs, nodes, plan), what is about this
// machine (logs, shutdown, failpoints, its secrets recipient, a database
// backup or dump into or from this machine) and what writes no engine
// state (db drop, which forgets a database no generation uses) are served
// by whichever daemon is asked.
var leaderRoutes = []string{
	"POST /v1/deploy",
	"POST /v1/rollback",
	"POST /v1/restart",
	"POST /v1/gc",
	"POST /v1/pause",
	"POST /v1/resume",
	"DELETE /v1/envs/{name}",
	"POST /v1/nodes/{name}/drain",
	"POST /v1/nodes/{name}/undrain",
	// A restore stops and starts the service through the engine.
	"POST /v1/db/restore",
	// Only the daemon that carries out the deploys has their progress.
	"GET /v1/deploys",
}

// leaderMux matches leaderRoutes exactly as NewHandler's mux matches the
// same patterns.
var leaderMux = func() *http.ServeMux {
	mux := http.NewServeMux()
	for _, p := range leaderRoutes {
		mux.HandleFunc(p, func(http.ResponseWriter, *http.Request) {})
	}
	return mux
}()

// ForLeader reports whether only the daemon that leads the engine carries
// out r: a standby passes it on.
func ForLeader(r *http.Request) bool {
	_, pattern := leaderMux.Handler(r)
	return pattern != ""
}

// ReplyError answers err as the API answers every error: its status and
// one Event naming the error's kind and message.
func ReplyError(w http.ResponseWriter, err error) { reply(w, nil, err) }

// Relay copies a daemon's answer resp to w unchanged — status, fields,
// body — flushing as it comes, so that a streamed deploy's progress
// reaches the client line by line. A streamed answer (NDJSON) cut off
// between two of its events ends with one more, the error lost(err)
// makes, which the client reports as the operation's; any other answer
// cut off is cut off for the client too (http.ErrAbortHandler).
func Relay(w http.ResponseWriter, resp *http.Response, lost func(error) error) {
	defer resp.Body.Close()
	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	streamed := resp.Header.Get("Content-Type") == ndjson
	if streamed {
		// Room for the event that says the stream was cut.
		h.Del("Content-Length")
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	atEvent := true // nothing, or whole events, written so far
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return // the client went away
			}
			atEvent = buf[n-1] == '\n'
			rc.Flush()
		}
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			if streamed && atEvent {
				json.NewEncoder(w).Encode(Event{Error: toError(lost(err))})
				rc.Flush()
				return
			}
			panic(http.ErrAbortHandler)
		}
	}
}

// ndjson is the content type of a streamed answer (stream).
const ndjson = "application/x-ndjson"
