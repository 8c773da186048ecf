package daemon

import (
	"fmt"

	"hostel/internal/cgroup"
	"hostel/internal/spec"
)

// openCgroups opens the cgroups that enforce services' memory, cpu and
// process limits. Without them the daemon still runs every service, and
// says so once here; plan warns for each spec that sets a limit.
func (d *Daemon) openCgroups() *cgroup.Hierarchy {
	h, err := cgroup.Open(d.opts.Root)
	if err != nil {
		d.logf("limits (memory, cpu, processes) are not enforced: %v", err)
		return nil
	}
	d.cgroups = h
	if !h.QuickMoves() {
		d.logf("cgroup v1 without favordynmods: each start (a wake too) waits for the kernel to move the process into its cgroups, up to ~20 ms on a busy machine; boot with cgroup_favordynmods=true to remove that wait (docs/scale-to-zero.md)")
	}
	return h
}

// limitWarnings says which services of s set limits this machine will not
// enforce.
func (d *Daemon) limitWarnings(s *spec.Spec) []string {
	if d.cgroups != nil {
		return nil
	}
	var out []string
	for _, name := range s.Names() {
		svc := s.Services[name]
		if svc.Memory != "" || svc.CPU != 0 {
			out = append(out, fmt.Sprintf("service %q: memory and cpu are not enforced on this machine (no usable cgroups; run hostel serve as root)", name))
		}
	}
	return out
}
