package deploy

import (
	"context"
	"fmt"
	"slices"
	"sort"

	"hostel/internal/spec"
)

// GCResult says what GC did.
type GCResult struct {
	// Removed are the numbers of the generations dropped, Kept the rest's
	// (generations, newest first), both as the store held them.
	Removed []uint64
	Kept    []*spec.Generation
	// Stopped are the versions that no kept generation held any more:
	// stopped if awake, unregistered (routes, endpoints, sleep).
	Stopped []string
	Aborted int64
	// Released is what the release hook reported (Nix roots removed).
	Released []string
}

// Collectable splits gens into the generations gc keeps — the newest keep
// and every environment's current one (currents) — and the numbers of
// those it drops, each newest first.
func Collectable(gens []*spec.Generation, currents map[string]*spec.Generation, keep int) (kept []*spec.Generation, removed []uint64) {
	current := map[uint64]bool{}
	for _, g := range currents {
		current[g.Number] = true
	}
	byNewest := append([]*spec.Generation(nil), gens...)
	sort.Slice(byNewest, func(i, j int) bool { return byNewest[i].Number > byNewest[j].Number })
	for i, g := range byNewest {
		if i < keep || current[g.Number] {
			kept = append(kept, g)
		} else {
			removed = append(removed, g.Number)
		}
	}
	return kept, removed
}

// GC drops the generations older than the newest keep (never an
// environment's current one), then drains: a version that no kept
// generation holds any more — a replaced version that stayed callable —
// is stopped if awake and unregistered. keep must be at least 1 (else an
// InvalidError). Then release, if not nil, lets go of what only the
// dropped generations pinned outside the engine (Nix roots), given the
// kept ones — still under the engine's lock, so that no deploy pins a
// version meanwhile that release would not see.
func (e *Engine) GC(ctx context.Context, keep int, release func(kept []*spec.Generation) ([]string, error), progress Progress) (*GCResult, error) {
	if keep < 1 {
		return nil, invalid(fmt.Errorf("--keep must be at least 1, not %d", keep))
	}
	if err := e.lead(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.read(ctx)
	if err != nil {
		return nil, err
	}
	res := &GCResult{}
	res.Kept, res.Removed = Collectable(v.snap.Generations, v.snap.Currents, keep)
	// An open window switches back to its previous generation: it is
	// a current one's, never dropped while the window may need it.
	for _, w := range e.windows {
		for i, n := range res.Removed {
			if w.prev != nil && n == w.prev.Number {
				res.Removed = append(res.Removed[:i], res.Removed[i+1:]...)
				res.Kept = append(res.Kept, w.prev)
				break
			}
		}
	}
	// First the nodes keep callable only what the kept generations keep
	// — the rest is stopped if awake and unregistered — then the
	// generations go.
	after := v.without(func(g *spec.Generation) bool { return slices.Contains(res.Removed, g.Number) })
	rev, err := e.writeDesired(ctx, after, e.keptByWindows(), nil, nil)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	res.Stopped, res.Aborted = e.drained(context.WithoutCancel(ctx), after, rev, progress)
	if err := e.writer().Delete(ctx, res.Removed...); err != nil {
		// The generations may be gone all the same (an answer lost after
		// the write): release by what the store holds now, so that what
		// only they pinned does not outlive them until the next start.
		if now, rerr := e.read(ctx); rerr == nil && release != nil {
			release(now.snap.Generations)
		}
		return nil, fmt.Errorf("gc: %w", err)
	}
	progress("gc: dropped generations %v", res.Removed)
	if release != nil {
		if res.Released, err = release(res.Kept); err != nil {
			return res, fmt.Errorf("gc: %w", err)
		}
	}
	return res, nil
}
