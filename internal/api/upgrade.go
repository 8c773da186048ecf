package api

import (
	"context"
	"errors"
	"net/http"
)

// UpgradeRequest asks the daemon to replace itself (`hostel upgrade`).
type UpgradeRequest struct {
	// Path is the new binary, an absolute path on the daemon's machine;
	// "": the daemon's own path.
	Path string `json:"path,omitempty"`
}

// UpgradeResult says which daemon serves after an upgrade.
type UpgradeResult struct {
	// OldPID is the daemon replaced, PID the one that serves now.
	OldPID int `json:"old_pid"`
	PID    int `json:"pid"`
	// Version is what the new binary's `hostel version` printed.
	Version string `json:"version"`
}

// UpgradeDaemon is a daemon that can hand its listening sockets and its
// services to a new binary and exit, in addition to Daemon.
type UpgradeDaemon interface {
	Upgrade(ctx context.Context, req UpgradeRequest) (*UpgradeResult, error)
}

func handleUpgrade(mux *http.ServeMux, d Daemon) {
	ud, ok := d.(UpgradeDaemon)
	if !ok {
		return
	}
	mux.HandleFunc("POST /v1/upgrade", func(w http.ResponseWriter, r *http.Request) {
		// It runs a binary named by the caller: the machine's own user
		// on the socket only, never a client of the remote API or a peer.
		if r.TLS != nil {
			reply(w, nil, Invalid(errors.New("hostel upgrade works on the daemon's machine only (--root), not through --api")))
			return
		}
		var req UpgradeRequest
		if !decodeBody(w, r, &req) {
			return
		}
		res, err := ud.Upgrade(r.Context(), req)
		reply(w, res, err)
	})
}

// Upgrade replaces the daemon by the binary at req.Path.
func (c *Client) Upgrade(ctx context.Context, req UpgradeRequest) (*UpgradeResult, error) {
	var r UpgradeResult
	return &r, c.call(ctx, http.MethodPost, "/v1/upgrade", req, &r)
}
