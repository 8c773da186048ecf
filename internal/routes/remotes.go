package routes

import (
	"slices"
	"strings"

	"hostel/internal/node"
	"hostel/internal/router"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// Remoter is what a Follower that follows the other nodes needs of the
// router: the instances that run there (router.Router.SetRemotes).
type Remoter interface {
	SetRemotes(remotes map[spec.VersionKey][]router.Remote)
}

var _ Remoter = (*router.Router)(nil)

// Remotes is the one function from the nodes' reports to what a node's
// router reaches on the other nodes: by instance, its replicas on every
// node but self that reports itself (nodes, node.KindNode's records) with
// an address to be reached at (--advertise), as that node reports them
// (instances, node.KindInstance's records). A node whose record is gone
// (its lease ended: it died) is reached no more, whatever it reported.
//
// A replica is ready when its node says it serves and it does not drain,
// or when it sleeps (a request wakes it there); one that starts, failed,
// is stopped or drains is tried only when no ready one is left.
func Remotes(self string, nodes, instances []store.Record) map[spec.VersionKey][]router.Remote {
	addrs := map[string]string{}
	for _, r := range nodes {
		if r.Key == self {
			continue
		}
		if info, err := node.DecodeInfo(r.Key, r.Value); err == nil && info.Addr != "" {
			addrs[r.Key] = info.Addr
		}
	}
	out := map[spec.VersionKey][]router.Remote{}
	for _, r := range instances {
		name, key, ok := node.SplitInstanceKey(r.Key)
		addr := addrs[name]
		if !ok || addr == "" {
			continue
		}
		in, err := node.DecodeInstance(r.Key, r.Value)
		if err != nil {
			continue
		}
		ready := in.Ready && !in.Draining || in.State == node.StateIdle
		out[key] = append(out[key], router.Remote{Node: name, Addr: addr, Ready: ready})
	}
	for _, rs := range out {
		slices.SortFunc(rs, func(a, b router.Remote) int { return strings.Compare(a.Node, b.Node) })
	}
	return out
}

// Reported reports whether ev changes what Remotes makes: a node's record
// or one of its instances' came, changed or went.
func Reported(ev store.Event) bool {
	switch ev.Type {
	case store.EventRecord, store.EventRecordDeleted:
		return ev.Kind == node.KindNode || ev.Kind == node.KindInstance
	}
	return false
}
