package daemon

import (
	"context"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"hostel/internal/nix"
	"hostel/internal/node"
)

// The cluster is its own binary cache: each node that advertises a
// node-to-node port serves there the store paths its deployment uses
// (nix.Cache: .narinfo signed with the cluster's Nix key, NAR), and a
// node about to run a version whose store paths it lacks takes them from
// the live nodes that have them (nix.Fetch), its Nix trusting the
// cluster's key alone, before it pins them (pinner) — so a deploy copies
// each closure to one node only, the one it talks to, and nodes need not
// share a store.

// Record kinds of the cluster's Nix signing key, both keyed by
// nixKeyName.
const (
	// kindNixKey holds the public key in Nix's format (NAME:BASE64), as
	// trusted-public-keys takes it: every node reads it.
	kindNixKey = "nix-key"
	// kindNixSecretKey holds the secret key in Nix's format, sealed to
	// every machine of the deployment (keyring), like the cluster's CA's.
	kindNixSecretKey = "nix-secret-key"
)

// nixKeyName is the name of the cluster's Nix key (the NAME of its
// signatures) and the key of its records: one per deployment.
const nixKeyName = "hostel-cluster"

// nixCache is what a node of a cluster with a node-to-node port has of
// the cluster's binary cache.
type nixCache struct {
	// key signs what the node serves; trusted is the public key in the
	// store, the only one whose signatures a fetch takes.
	key     *nix.SigningKey
	trusted string
	// client is the node's one client to its peers (Daemon.peers).
	client *http.Client
	serve  *nix.Cache

	mu sync.Mutex
	// inUse is the closure of the store paths the deployment's
	// generations use, for the set of those paths tops (joined): both
	// change only with a deploy.
	tops  string
	inUse map[string]bool
	at    time.Time // when the store last said inUse holds
}

// inUseTTL is how long a path found in use is served without reading the
// store again: no longer in use (a gc), it may be served that much longer.
const inUseTTL = time.Minute

// startNixCache loads the cluster's Nix key (making it in the store if
// there is none yet) and readies the cache the node serves and fetches
// from; without Nix it does nothing. peers is the node's client to the
// other nodes.
func (d *Daemon) startNixCache(ctx context.Context, peers http.RoundTripper) error {
	if !nix.Available() {
		return nil
	}
	pub, priv, err := d.keys.LoadPair(ctx, kindNixKey, kindNixSecretKey, nixKeyName, func() ([]byte, []byte, error) {
		k, err := nix.NewSigningKey(nixKeyName)
		if err != nil {
			return nil, nil, err
		}
		return []byte(k.Public()), []byte(k.String()), nil
	})
	if err != nil {
		return err
	}
	key, err := nix.ParseSigningKey(string(priv))
	clear(priv)
	if err != nil {
		return err
	}
	c := &nixCache{key: key, trusted: string(pub), client: &http.Client{Transport: peers}}
	c.serve = &nix.Cache{Key: key, Serves: d.servesStorePath, Logf: d.logf}
	d.nixCache = c
	return nil
}

// servesStorePath reports whether path is in the closure of a store path
// that a generation of the deployment uses (a kept one, or a deploy's
// staged one): what a node may be asked for; nothing else of its store
// is served. A path found in use lately is served without reading the
// store again (a fetch asks for a closure's paths one after the other);
// one that was not is looked for afresh (a deploy may just have staged
// it).
func (d *Daemon) servesStorePath(ctx context.Context, path string) (bool, error) {
	c := d.nixCache
	c.mu.Lock()
	recent := c.inUse[path] && time.Since(c.at) < inUseTTL
	c.mu.Unlock()
	if recent {
		return true, nil
	}
	snap, err := d.store.Read(ctx, node.KindDesired)
	if err != nil {
		return false, err
	}
	var paths []string
	for _, g := range snap.Generations {
		paths = append(paths, generationPaths(g)...)
	}
	for _, r := range snap.Records[node.KindDesired] {
		if want, err := node.DecodeDesired(r.Key, r.Value); err == nil && want.Staged != nil {
			paths = append(paths, generationPaths(want.Staged)...)
		}
	}
	tops, err := nix.TopPaths(paths)
	if err != nil {
		return false, err
	}
	joined := strings.Join(tops, " ")
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inUse != nil && c.tops == joined {
		c.at = time.Now()
		return c.inUse[path], nil
	}
	missing, err := nix.Missing(ctx, tops)
	if err != nil {
		return false, err
	}
	inUse := map[string]bool{}
	if valid := without(tops, missing); len(valid) > 0 {
		closure, err := nix.Closure(ctx, valid)
		if err != nil {
			return false, err
		}
		for _, p := range closure {
			inUse[p] = true
		}
	}
	// A path this node lacks now may come later (a fetch): until it has
	// them all, it reads them again.
	if len(missing) == 0 {
		c.tops, c.inUse, c.at = joined, inUse, time.Now()
	}
	return inUse[path], nil
}

// cachePeers are the caches of the other live nodes that advertise an
// address, by name.
func (d *Daemon) cachePeers(ctx context.Context) ([]nix.CachePeer, error) {
	recs, err := d.store.Records(ctx, node.KindNode)
	if err != nil {
		return nil, err
	}
	var peers []nix.CachePeer
	for _, r := range recs {
		info, err := node.DecodeInfo(r.Key, r.Value)
		if err != nil || info.Name == d.nodeName() || info.Addr == "" {
			continue
		}
		peers = append(peers, nix.CachePeer{Name: info.Name, URL: "https://" + info.Addr})
	}
	sort.Slice(peers, func(i, j int) bool { return peers[i].Name < peers[j].Name })
	return peers, nil
}

// without returns paths without those in drop.
func without(paths, drop []string) []string {
	skip := map[string]bool{}
	for _, p := range drop {
		skip[p] = true
	}
	var out []string
	for _, p := range paths {
		if !skip[p] {
			out = append(out, p)
		}
	}
	return out
}

// fetchStorePaths adds to this machine's store the closures of those of
// paths it lacks, from the other live nodes that serve them; without the
// cluster's cache (a lone daemon, a node without a node-to-node port) it
// does nothing, and the pin that follows names what is missing.
func (d *Daemon) fetchStorePaths(ctx context.Context, paths []string) error {
	c := d.nixCache
	if c == nil || len(paths) == 0 {
		return nil
	}
	added, err := nix.Fetch(ctx, c.client, d.cachePeers, paths, c.trusted)
	if err != nil {
		return err
	}
	if len(added) > 0 {
		d.logf("took %d store paths from the cluster's other nodes", len(added))
	}
	return nil
}
