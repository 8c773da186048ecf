package node

import (
	"context"
	"encoding/json"
	"reflect"
	"time"

	"hostel/internal/failpoint"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

// reportLoop reports the node's instances every ReportEvery until ctx
// ends: only what changed is written.
func (f *Follower) reportLoop(ctx context.Context) {
	t := time.NewTicker(ReportEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f.report(ctx)
		}
	}
}

// report writes, in one transaction, the reports of the instances whose
// state changed since the last, and deletes those of instances the node
// no longer runs. One at a time, each taken and written before the next
// is taken (the loop's and a reconcile's): a report taken while a version
// started and slow to write would otherwise land after the one that it
// is ready, and say it starts again.
func (f *Follower) report(ctx context.Context) {
	f.reporting.Lock()
	defer f.reporting.Unlock()
	now := map[spec.VersionKey]Instance{}
	for _, k := range f.agent.Running() {
		now[k] = f.instance(k)
	}
	f.mu.Lock()
	var writes []store.Write
	for k, in := range now {
		if old, ok := f.reported[k]; ok && same(old, in) {
			continue
		}
		v, err := json.Marshal(in)
		if err != nil {
			continue
		}
		writes = append(writes, store.Write{Kind: KindInstance, Key: InstanceKey(f.opts.Name, k), Value: v, Rev: store.AnyRevision, Lease: f.opts.Lease})
	}
	for k := range f.reported {
		if _, ok := now[k]; !ok {
			writes = append(writes, store.Write{Kind: KindInstance, Key: InstanceKey(f.opts.Name, k), Rev: store.AnyRevision, Delete: true})
		}
	}
	f.mu.Unlock()
	if len(writes) == 0 {
		return
	}
	if err := failpoint.Inject("node-before-report"); err != nil {
		f.logf("node %s: reporting instances: %v", f.opts.Name, err)
		return // the next look writes them
	}
	// Few at a time: one etcd transaction holds at most store.MaxTxnOps.
	for len(writes) > 0 {
		n := min(len(writes), store.MaxTxnOps-3)
		if _, err := f.st.Txn(ctx, writes[:n]...); err != nil {
			f.logf("node %s: reporting instances: %v", f.opts.Name, err)
			return // the next look writes them again
		}
		writes = writes[n:]
	}
	f.mu.Lock()
	f.reported = now
	f.mu.Unlock()
}

// same reports whether two reports of an instance say the same; when a
// health check was made is not news (a check every health.interval would
// make a write of every report), whether it passed is.
func same(a, b Instance) bool {
	if a.Health != nil && b.Health != nil && a.Health.OK == b.Health.OK && a.Health.Error == b.Health.Error {
		a.Health = b.Health
	}
	return reflect.DeepEqual(a, b)
}

// instance is what the node reports of instance k now.
func (f *Follower) instance(k spec.VersionKey) Instance {
	in := Instance{Node: f.opts.Name, Key: k, State: supervisor.StateStopped, Draining: f.agent.Draining(k)}
	if st, ok := f.opts.Procs.Status(k); ok {
		in.State, in.Ready, in.Restarts, in.LastExit, in.Error, in.PID = st.State, st.Ready, st.Restarts, st.LastExit, st.LastError, st.PID
		if st.PID > 0 || st.State == supervisor.StateRunning || st.State == supervisor.StateUnhealthy {
			if inst, ok := f.opts.Procs.Get(k); ok {
				in.Addr = inst.Addr()
			}
		}
		if h := st.Health; h != nil {
			in.Health = &HealthCheck{OK: h.OK, At: h.At, Error: h.Error}
		}
	}
	if sl, ok := f.opts.Router.Sleeping(k); ok && sl.Asleep {
		in.State, in.Ready, in.Addr, in.PID = StateIdle, false, "", 0
		if sl.WakeError != nil {
			// It could not start (a wake, or the node's start): it is
			// tried again at its next request.
			in.State, in.Error = supervisor.StateFailed, sl.WakeError.Error()
		}
	}
	return in
}
