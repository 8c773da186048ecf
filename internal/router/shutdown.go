package router

import (
	"context"
	"net"
	"sync"
)

// ShutdownEndpoints closes every endpoint's listener, so new connections to
// <NEED>_URL are refused (or, when the socket was passed on, taken by the
// daemon that serves next), and waits until the requests in flight through
// them are done or ctx ends — a request read meanwhile, even on a
// connection accepted just before, is answered (drain.Server). The
// endpoints are forgotten; their ports are free to be opened again, as a
// restarted daemon does.
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
			ep.srv.Stop(ctx)
		})
	}
	wg.Wait()
}

// EndpointListeners returns the listeners of the open endpoints: hostel
// upgrade passes them on to the daemon that replaces this one, which
// reopens each endpoint on its own (Options.Listen).
func (r *Router) EndpointListeners() []net.Listener {
	r.mu.Lock()
	defer r.mu.Unlock()
	lns := make([]net.Listener, 0, len(r.endpoints))
	for _, ep := range r.endpoints {
		lns = append(lns, ep.ln)
	}
	return lns
}
