package api

import (
	"context"
	"net/http"
)

// PauseRequest holds a service's requests: past Max (a Go duration; empty
// means 30s) a held request is answered 503.
type PauseRequest struct {
	Service string `json:"service"`
	Max     string `json:"max,omitempty"`
}

// ResumeRequest releases what a pause of Service holds.
type ResumeRequest struct {
	Service string `json:"service"`
}

// PauseDaemon is what a daemon that can hold a service's requests serves,
// in addition to Daemon.
type PauseDaemon interface {
	Pause(ctx context.Context, req PauseRequest) error
	Resume(ctx context.Context, req ResumeRequest) error
}

// handlePause adds /v1/pause and /v1/resume when d serves them.
func handlePause(mux *http.ServeMux, d Daemon) {
	pd, ok := d.(PauseDaemon)
	if !ok {
		return
	}
	mux.HandleFunc("POST /v1/pause", func(w http.ResponseWriter, r *http.Request) {
		var req PauseRequest
		if !decodeBody(w, r, &req) {
			return
		}
		reply(w, struct{}{}, pd.Pause(r.Context(), req))
	})
	mux.HandleFunc("POST /v1/resume", func(w http.ResponseWriter, r *http.Request) {
		var req ResumeRequest
		if !decodeBody(w, r, &req) {
			return
		}
		reply(w, struct{}{}, pd.Resume(r.Context(), req))
	})
}

// Pause holds a service's requests until Resume.
func (c *Client) Pause(ctx context.Context, req PauseRequest) error {
	return c.call(ctx, http.MethodPost, "/v1/pause", req, nil)
}

// Resume releases a paused service's requests.
func (c *Client) Resume(ctx context.Context, service string) error {
	return c.call(ctx, http.MethodPost, "/v1/resume", ResumeRequest{Service: service}, nil)
}
