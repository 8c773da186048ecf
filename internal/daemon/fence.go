package daemon

import (
	"net"
	"time"

	"hostel/internal/handover"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

// Fencing by the node's lease (docs/architecture.md, "Fencing"). An
// exclusive service runs once in the whole cluster, and the engine may
// start it on another node as soon as this node's lease has ended at the
// store. So this node stops its exclusive instances before that can
// happen: the lease lives at the store until its last confirmed renewal
// was asked plus its TTL at least (store.Lease.Renewed); fenceMargin
// before that bound, the supervisor stops them (Config.Fenced) and starts
// none until the lease is renewed, or the node rejoined with a new one
// and reconciled to what is placed on it now. The engine needs no wait of
// its own: it learns that the lease ended from the store, after the end,
// and the node's bound comes fenceMargin before the earliest end.
//
// A daemon that is dead or frozen stops nothing: its holder does
// (handover.RunHolder, supervisor.KillFenced), told the same bound with
// every renewal. What cannot be fenced from inside is a machine frozen
// whole, holder and services with the daemon: thawed, its exclusive
// services run until the daemon's or the holder's timer, past already,
// fires — milliseconds, but not none: a process cannot act while it is
// stopped (docs/failpoints.md).

// fenceMargin is how long before the earliest end of the node's lease
// its exclusive instances are stopped: enough for FenceGrace (SIGTERM,
// then SIGKILL) and the holder's word to arrive, with room to spare.
// Renewed every third of NodeTTL (2 s), the node stops them after 4.5 s
// without a renewal that went through: two missed.
const fenceMargin = 1500 * time.Millisecond

// fenceTell is how often the daemon tells its holder the bound anew when
// it moved.
const fenceTell = 250 * time.Millisecond

// fenceLease is the lease the node's exclusive instances run under.
type fenceLease struct{ l store.Lease }

// setFenceLease makes l the lease the node fences on: at the start, and
// once a rejoin has reconciled under it (never before: what moved away
// meanwhile must not start again on the new lease's strength).
func (d *Daemon) setFenceLease(l store.Lease) { d.fence.Store(&fenceLease{l}) }

// fenceUntil is until when the node's exclusive instances may run
// (supervisor.Options.Fence): zero before the node has a lease.
func (d *Daemon) fenceUntil() time.Time {
	f := d.fence.Load()
	if f == nil {
		return time.Time{}
	}
	return f.l.Renewed().Add(f.l.TTL() - fenceMargin)
}

// tellFence tells the holder at the other end of c the bound whenever it
// moves (handover.HoldFence), until c fails or is no longer the holder's.
func (d *Daemon) tellFence(c net.Conn) {
	var told time.Time
	for ; ; time.Sleep(fenceTell) {
		if d.holderConn() != c {
			return
		}
		until := d.fenceUntil()
		if until.IsZero() || until.Equal(told) {
			continue
		}
		d.holderWrite.Lock()
		err := handover.HoldFence(c, time.Until(until).Milliseconds())
		d.holderWrite.Unlock()
		if err != nil {
			return
		}
		told = until
	}
}

// RunHolder is the holder's process (handover.RunHolder), which fences
// the node when the bound its daemon told passes.
func RunHolder() error {
	return handover.RunHolder(func(root string) { supervisor.KillFenced(root) })
}
