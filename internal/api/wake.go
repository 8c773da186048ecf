package api

import (
	"context"
	"net/http"
)

// WakeRequest asks the daemon to wake a version of its machine that
// sleeps (scale to zero): the daemon a hostel upgrade replaced asks the
// new one, which has the services, for the requests it still serves.
type WakeRequest struct {
	// Version is the version's key, SERVICE-VERSION.
	Version string `json:"version"`
}

// WakeResult is where the woken version serves.
type WakeResult struct {
	Addr string `json:"addr"`
}

// WakeDaemon is what a daemon that wakes sleeping versions on request
// serves, in addition to Daemon.
type WakeDaemon interface {
	Wake(ctx context.Context, req WakeRequest) (*WakeResult, error)
}

// handleWake adds /v1/wake when d serves it.
func handleWake(mux *http.ServeMux, d Daemon) {
	wd, ok := d.(WakeDaemon)
	if !ok {
		return
	}
	mux.HandleFunc("POST /v1/wake", func(w http.ResponseWriter, r *http.Request) {
		var req WakeRequest
		if !decodeBody(w, r, &req) {
			return
		}
		res, err := wd.Wake(r.Context(), req)
		reply(w, res, err)
	})
}

// Wake wakes a sleeping version and returns the address it serves at.
func (c *Client) Wake(ctx context.Context, version string) (string, error) {
	var res WakeResult
	if err := c.call(ctx, http.MethodPost, "/v1/wake", WakeRequest{Version: version}, &res); err != nil {
		return "", err
	}
	return res.Addr, nil
}
