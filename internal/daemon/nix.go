package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"sync"

	"hostel/internal/api"
	"hostel/internal/deploy"
	"hostel/internal/nix"
	"hostel/internal/spec"
	"hostel/internal/supervisor"
)

// pinner is the deploy preparer that makes a version's store paths GC roots
// before its process starts, so that no garbage collection can take what a
// generation needs — first taking those this machine lacks from the
// cluster's other nodes (fetch). Its cleanup removes the roots it added
// for a version that then did not start; roots that were there before
// stay.
type pinner struct {
	roots nix.Roots
	// fetch adds the closures of store paths this machine lacks to its
	// store (Daemon.fetchStorePaths); nil fetches nothing.
	fetch func(ctx context.Context, paths []string) error

	mu sync.Mutex
	// added holds the versions whose preparation added their roots.
	added map[spec.VersionKey]bool
}

func newPinner(roots nix.Roots, fetch func(context.Context, []string) error) *pinner {
	return &pinner{roots: roots, fetch: fetch, added: map[spec.VersionKey]bool{}}
}

var _ deploy.Cleaner = (*pinner)(nil)

// Prepare implements deploy.Preparer.
func (p *pinner) Prepare(ctx context.Context, g *spec.Generation, service string, _ *supervisor.Config) error {
	key := spec.Key(service, g.Versions[service])
	paths := servicePaths(g.Spec.Services[service])
	added := len(paths) > 0 && !p.roots.Pinned(string(key))
	p.mu.Lock()
	p.added[key] = added
	p.mu.Unlock()
	if len(paths) == 0 {
		return nil
	}
	if p.fetch != nil {
		if err := p.fetch(ctx, paths); err != nil {
			return err
		}
	}
	return p.roots.Pin(string(key), paths)
}

// Cleanup implements deploy.Cleaner.
func (p *pinner) Cleanup(_ context.Context, g *spec.Generation, service string, started bool) error {
	key := spec.Key(service, g.Versions[service])
	p.mu.Lock()
	added := p.added[key]
	delete(p.added, key)
	p.mu.Unlock()
	if started || !added {
		return nil
	}
	return p.roots.Unpin(string(key))
}

// servicePaths are the store paths a service mentions: its package, and any
// other in exec, release or env.
func servicePaths(svc *spec.Service) []string {
	if svc == nil {
		return nil
	}
	b, _ := json.Marshal(svc)
	return nix.StorePathsIn(b)
}

// generationPaths are the store paths of every service of g.
func generationPaths(g *spec.Generation) []string {
	var out []string
	for _, svc := range g.Spec.Services {
		out = append(out, servicePaths(svc)...)
	}
	return out
}

// unpin removes the roots of versions that neither a kept generation nor
// a running process holds, and, in a cluster, pins the store paths of the
// kept generations' versions that this machine holds but did not pin (it
// does not run them): a deploy copies a closure to the node it talks to,
// which may hold the only copy besides the nodes that run it — the
// collection that follows must not take it, or a version placed anew
// could be fetched from nowhere. Under the engine's lock: see deploy.GC.
func (d *Daemon) unpin(kept []*spec.Generation) ([]string, error) {
	roots := nix.RootsFor(d.opts.Root)
	removed, err := roots.Prune(func() (map[string]bool, error) { return d.pinned(kept), nil })
	if err != nil || d.nixCache == nil {
		return removed, err
	}
	return removed, holdClosures(context.Background(), roots, kept)
}

// holdClosures pins, for each version of gens not pinned yet, those of its
// store paths that are valid here.
func holdClosures(ctx context.Context, roots nix.Roots, gens []*spec.Generation) error {
	for _, g := range gens {
		for name, svc := range g.Spec.Services {
			key := string(spec.Key(name, g.Versions[name]))
			if roots.Pinned(key) {
				continue
			}
			tops, err := nix.TopPaths(servicePaths(svc))
			if err != nil || len(tops) == 0 {
				continue
			}
			missing, err := nix.Missing(ctx, tops)
			if err != nil {
				return err
			}
			if held := without(tops, missing); len(held) > 0 {
				if err := roots.Pin(key, held); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// collectGarbage runs the Nix garbage collector, if Nix is installed.
func (d *Daemon) collectGarbage(ctx context.Context) (nix.GCStats, error) {
	if !nix.Available() {
		return nix.GCStats{}, nil
	}
	return nix.CollectGarbage(ctx)
}

// closureSize is the size of the closures of g's store paths; 0 without Nix.
func (d *Daemon) closureSize(ctx context.Context, g *spec.Generation) int64 {
	n, err := nix.ClosureSize(ctx, generationPaths(g))
	if err != nil {
		d.logf("closure size of generation %d: %v", g.Number, err)
	}
	return n
}

// packages returns a lookup of the package of versions that are no
// longer current, from the generations that hold them ("" if none does):
// one read of the store however many it is asked about.
func (d *Daemon) packages(ctx context.Context) func(service string, v spec.Version) string {
	var byKey map[spec.VersionKey]string
	return func(service string, v spec.Version) string {
		if byKey == nil {
			byKey = map[spec.VersionKey]string{}
			gens, err := d.store.List(ctx)
			if err != nil {
				return ""
			}
			for _, g := range gens {
				for name, svc := range g.Spec.Services {
					byKey[spec.Key(name, g.Versions[name])] = svc.Package
				}
			}
		}
		return byKey[spec.Key(service, v)]
	}
}

var _ api.NixDaemon = (*Daemon)(nil)

// NixMissing implements api.NixDaemon.
func (d *Daemon) NixMissing(ctx context.Context, paths []string) ([]string, error) {
	top, err := nix.TopPaths(paths)
	if err != nil {
		return nil, api.Invalid(err)
	}
	if !nix.Available() {
		return nil, errors.New("this machine has no Nix to take store paths: install it (Debian: apt-get install nix-bin)")
	}
	return nix.Missing(ctx, top)
}

// NixImport implements api.NixDaemon. What a client sends is checked by
// Nix (each path against its hash) and is only ever run by a deploy the
// same client could make with any other package: its token is the
// daemon's whole trust.
func (d *Daemon) NixImport(ctx context.Context, r io.Reader) ([]string, error) {
	if !nix.Available() {
		return nil, errors.New("this machine has no Nix to take store paths: install it (Debian: apt-get install nix-bin)")
	}
	paths, err := nix.Import(ctx, r)
	if err != nil {
		return nil, err
	}
	d.logf("took %d store paths over the API", len(paths))
	return paths, nil
}
