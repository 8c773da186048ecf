package router

import (
	"context"
	"sync"
)

// ShutdownEndpoints closes every endpoint's listener, so new connections to
// <NEED>_URL are refused, and waits until the requests in flight through
// them are done or ctx ends. The endpoints are forgotten; their ports are
// free to be opened again, as a restarted daemon does.
func (r *Router) ShutdownEndpoints(ctx context.Context) {
	r.mu.Lock()
	eps := make([]*endpoint, 0, len(r.endpoints))
	for key, ep := range r.endpoints {
		eps = append(eps, ep)
		delete(r.endpoints, key)
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, ep := range eps {
		wg.Go(func() {
			if ep.srv.Shutdown(ctx) != nil {
				ep.srv.Close()
			}
		})
	}
	wg.Wait()
}
