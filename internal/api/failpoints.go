package api

import (
	"io"
	"net/http"

	"hostel/internal/failpoint"
)

// handleFailpoints adds PUT /v1/failpoints/{name}, whose body is the
// point's terms ("error", "1*kill", "sleep(50ms)", "off"), in a binary
// built with -tags failpoints only: a robustness test arms a point in a
// running daemon right before the operation that reaches it, rather than
// at the daemon's start, which passes every store write. Root-only as
// the rest of the API. Without the tag the route does not exist.
func handleFailpoints(mux *http.ServeMux) {
	if !failpoint.Enabled {
		return
	}
	mux.HandleFunc("PUT /v1/failpoints/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if _, ok := failpoint.Lookup(name); !ok {
			http.Error(w, "no failpoint "+name, http.StatusNotFound)
			return
		}
		terms, err := io.ReadAll(io.LimitReader(r.Body, 1<<10))
		if err == nil {
			err = failpoint.Enable(name, string(terms))
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}
