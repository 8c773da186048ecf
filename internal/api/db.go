package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"time"
)

// DatabaseStatus is a service's database in status: fields only grow.
type DatabaseStatus struct {
	Name string `json:"name"`
	// SizeBytes is the database's size; 0 when the server could not be asked.
	SizeBytes int64 `json:"size_bytes"`
	// LastBackup is when the newest backup under ROOT/backups was taken;
	// nil when there is none.
	LastBackup *time.Time `json:"last_backup,omitempty"`
}

// DBInfo is `GET /v1/db/info`: how to reach a service's database as its role.
type DBInfo struct {
	Service  string `json:"service"`
	Database string `json:"database"`
	Role     string `json:"role"`
	// Host is the socket directory or host name; Port the server's port.
	Host string `json:"host"`
	Port int    `json:"port"`
	// OSUser is the system user to connect as (peer authentication); empty
	// when the role has a password instead.
	OSUser string `json:"os_user,omitempty"`
	// Password is the role's password when it has one.
	Password string `json:"password,omitempty"`
	// TLSEnv is how the role's connections are secured, as libpq
	// environment variables (PGSSLMODE=…), the same as the service gets.
	TLSEnv []string `json:"tls_env,omitempty"`
}

// DBBackup says where a backup went.
type DBBackup struct {
	File string `json:"file"`
	Size int64  `json:"size"`
}

// DBRestore says what a restore did.
type DBRestore struct {
	// SafetyBackup is the backup taken just before the restore.
	SafetyBackup string `json:"safety_backup"`
	// Restarted is the version restarted after the restore; empty if the
	// service was not running.
	Restarted string `json:"restarted,omitempty"`
}

// DBRequest names the service whose database an operation is about.
type DBRequest struct {
	Service string `json:"service"`
}

// DBDaemon is what a daemon with PostgreSQL support serves, in addition to
// Daemon.
type DBDaemon interface {
	DBInfo(ctx context.Context, service string) (*DBInfo, error)
	// DBBackup takes a backup into ROOT/backups/SERVICE.
	DBBackup(ctx context.Context, service string) (*DBBackup, error)
	// DBDump writes a custom-format dump to w.
	DBDump(ctx context.Context, service string, w io.Writer) error
	// DBRestore restores the dump read from r, with the service stopped.
	DBRestore(ctx context.Context, service string, r io.Reader) (*DBRestore, error)
	// DBDrop removes the database and role of a service no longer deployed.
	DBDrop(ctx context.Context, service string) error
}

// handleDB adds the /v1/db endpoints when d serves them.
func handleDB(mux *http.ServeMux, d Daemon) {
	dd, ok := d.(DBDaemon)
	if !ok {
		return
	}
	mux.HandleFunc("GET /v1/db/info", func(w http.ResponseWriter, r *http.Request) {
		info, err := dd.DBInfo(r.Context(), r.URL.Query().Get("service"))
		reply(w, info, err)
	})
	mux.HandleFunc("POST /v1/db/backup", func(w http.ResponseWriter, r *http.Request) {
		var req DBRequest
		if !decodeBody(w, r, &req) {
			return
		}
		b, err := dd.DBBackup(r.Context(), req.Service)
		reply(w, b, err)
	})
	mux.HandleFunc("GET /v1/db/dump", func(w http.ResponseWriter, r *http.Request) {
		// The dump is checked before the first byte is sent, so an error
		// still gets a JSON answer.
		service := r.URL.Query().Get("service")
		if _, err := dd.DBInfo(r.Context(), service); err != nil {
			reply(w, nil, err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		fw := &flushWriter{w: w}
		if err := dd.DBDump(r.Context(), service, fw); err != nil && !fw.wrote {
			reply(w, nil, err)
		} else if err != nil {
			// Too late for a status: cut the stream so the client sees it broke.
			panic(http.ErrAbortHandler)
		}
	})
	mux.HandleFunc("POST /v1/db/restore", func(w http.ResponseWriter, r *http.Request) {
		res, err := dd.DBRestore(r.Context(), r.URL.Query().Get("service"), r.Body)
		reply(w, res, err)
	})
	mux.HandleFunc("POST /v1/db/drop", func(w http.ResponseWriter, r *http.Request) {
		var req DBRequest
		if !decodeBody(w, r, &req) {
			return
		}
		reply(w, struct{}{}, dd.DBDrop(r.Context(), req.Service))
	})
}

// DBInfo returns how to reach a service's database.
func (c *Client) DBInfo(ctx context.Context, service string) (*DBInfo, error) {
	var info DBInfo
	return &info, c.call(ctx, http.MethodGet, "/v1/db/info?"+url.Values{"service": {service}}.Encode(), nil, &info)
}

// DBBackup takes a backup on the daemon's side.
func (c *Client) DBBackup(ctx context.Context, service string) (*DBBackup, error) {
	var b DBBackup
	return &b, c.call(ctx, http.MethodPost, "/v1/db/backup", DBRequest{Service: service}, &b)
}

// DBDump copies a dump of a service's database to w.
func (c *Client) DBDump(ctx context.Context, service string, w io.Writer) error {
	return c.copyTo(ctx, "/v1/db/dump?"+url.Values{"service": {service}}.Encode(), w)
}

// DBRestore sends a dump to restore into a service's database.
func (c *Client) DBRestore(ctx context.Context, service string, dump io.Reader) (*DBRestore, error) {
	resp, err := c.send(ctx, http.MethodPost, "/v1/db/restore?"+url.Values{"service": {service}}.Encode(), "application/octet-stream", dump)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, decodeError(resp)
	}
	var res DBRestore
	return &res, json.NewDecoder(resp.Body).Decode(&res)
}

// DBDrop removes a service's database and role.
func (c *Client) DBDrop(ctx context.Context, service string) error {
	return c.call(ctx, http.MethodPost, "/v1/db/drop", DBRequest{Service: service}, nil)
}
