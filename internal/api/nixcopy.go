package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
)

// NixPaths names store paths: those a client asks about, or those the
// daemon's store lacks or took.
type NixPaths struct {
	Paths []string `json:"paths"`
}

// NixDaemon is a daemon that takes store paths over its API (deploy
// --api copies closures with it, as --target does with nix copy over SSH),
// in addition to Daemon.
type NixDaemon interface {
	// NixMissing returns those of paths its machine's store lacks.
	NixMissing(ctx context.Context, paths []string) ([]string, error)
	// NixImport adds the paths of a `nix-store --export` stream to its
	// machine's store and returns them.
	NixImport(ctx context.Context, r io.Reader) ([]string, error)
}

// handleNix adds the /v1/nix endpoints when d serves them.
func handleNix(mux *http.ServeMux, d Daemon) {
	nd, ok := d.(NixDaemon)
	if !ok {
		return
	}
	mux.HandleFunc("POST /v1/nix/missing", func(w http.ResponseWriter, r *http.Request) {
		var req NixPaths
		if !decodeBody(w, r, &req) {
			return
		}
		missing, err := nd.NixMissing(r.Context(), req.Paths)
		reply(w, &NixPaths{Paths: missing}, err)
	})
	mux.HandleFunc("POST /v1/nix/import", func(w http.ResponseWriter, r *http.Request) {
		took, err := nd.NixImport(r.Context(), r.Body)
		reply(w, &NixPaths{Paths: took}, err)
	})
}

// NixMissing returns those of paths the daemon's machine lacks.
func (c *Client) NixMissing(ctx context.Context, paths []string) ([]string, error) {
	var out NixPaths
	err := c.call(ctx, http.MethodPost, "/v1/nix/missing", NixPaths{Paths: paths}, &out)
	return out.Paths, err
}

// NixImport sends a `nix-store --export` stream to the daemon's machine's
// store and returns the paths it took.
func (c *Client) NixImport(ctx context.Context, export io.Reader) ([]string, error) {
	resp, err := c.send(ctx, http.MethodPost, "/v1/nix/import", "application/octet-stream", export)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, decodeError(resp)
	}
	var out NixPaths
	return out.Paths, json.NewDecoder(resp.Body).Decode(&out)
}
