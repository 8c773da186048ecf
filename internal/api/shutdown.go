package api

import (
	"context"
	"net/http"
)

// ShutdownResult says what `POST /v1/shutdown` stopped.
type ShutdownResult struct {
	// Stopped lists the versions stopped, SERVICE-VERSION.
	Stopped []string `json:"stopped"`
}

// ShutdownDaemon is a daemon that can stop its services and then itself, in
// addition to Daemon. A daemon that merely stops leaves its services
// running for the next one to adopt.
type ShutdownDaemon interface {
	Shutdown(ctx context.Context) (*ShutdownResult, error)
}

func handleShutdown(mux *http.ServeMux, d Daemon) {
	sd, ok := d.(ShutdownDaemon)
	if !ok {
		return
	}
	mux.HandleFunc("POST /v1/shutdown", func(w http.ResponseWriter, r *http.Request) {
		res, err := sd.Shutdown(r.Context())
		reply(w, res, err)
	})
}

// Shutdown stops every service, then the daemon.
func (c *Client) Shutdown(ctx context.Context) (*ShutdownResult, error) {
	var r ShutdownResult
	return &r, c.call(ctx, http.MethodPost, "/v1/shutdown", struct{}{}, &r)
}
