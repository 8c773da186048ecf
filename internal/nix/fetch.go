package nix

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// CachePeer is a binary cache Fetch may take store paths from: another
// node's (Cache, on its node-to-node port).
type CachePeer struct {
	// Name names it in errors (a node's name).
	Name string
	// URL is the cache's base URL ("https://HOST:PORT").
	URL string
}

// maxNarInfo bounds a .narinfo read from a peer, and narInfoTimeout the
// time to read it: a node that does not answer is passed over for the
// next (a NAR takes as long as it takes).
const (
	maxNarInfo     = 1 << 20
	narInfoTimeout = 30 * time.Second
)

// Fetch adds the closures of paths (store paths) that this machine's store
// lacks from the caches of peers (asked for once, when a path is
// missing), each path from the first peer that
// serves it with a valid signature by trusted (a public key in Nix's
// format), through client. Nix takes them from a binary cache that Fetch
// serves on loopback for as long as the copy lasts — the .narinfo files
// it read, and each NAR streamed from its peer as Nix reads it — with
// `nix copy --from http://…`, trusted the only key trusted: Nix checks
// every path's signature and its NAR's hash, and adds nothing that fails.
// It returns the paths added. An error names the path and the peers
// asked.
func Fetch(ctx context.Context, client *http.Client, peersOf func(context.Context) ([]CachePeer, error), paths []string, trusted string) ([]string, error) {
	top, err := TopPaths(paths)
	if err != nil {
		return nil, err
	}
	if os.Getenv("NIX_REMOTE") == "" && allExist(top) {
		// The common case — a node starts what it has — costs no
		// process: a path there is taken as valid, as Roots.Pin does
		// (unless Nix's store is another, NIX_REMOTE's).
		return nil, nil
	}
	missing, err := Missing(ctx, top)
	if err != nil || len(missing) == 0 {
		return nil, err
	}
	peers, err := peersOf(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s is not in this machine's Nix store, and the nodes to take it from are unknown: %w", missing[0], err)
	}
	if len(peers) == 0 {
		return nil, fmt.Errorf("%s is not in this machine's Nix store, and no other node is there to take it from", missing[0])
	}
	// Every .narinfo of the closure, even of paths this store has: nix
	// copy reads the whole closure from the cache before it skips those.
	c := &relay{client: client, infos: map[string]*NarInfo{}, from: map[string]CachePeer{}}
	var closure []string
	unreachable := map[string]error{}
	queue := append([]string(nil), missing...)
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if c.infos[HashPart(p)] != nil {
			continue
		}
		ni, peer, err := narInfoFrom(ctx, client, peers, p, trusted, unreachable)
		if err != nil {
			return nil, err
		}
		c.infos[HashPart(p)], c.from[HashPart(p)] = ni, peer
		closure = append(closure, p)
		for _, ref := range ni.References {
			if c.infos[HashPart(ref)] == nil {
				queue = append(queue, ref)
			}
		}
	}
	lacking, err := Missing(ctx, closure)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: c, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	// A new port each time: Nix's cache of what a binary cache has,
	// by URL, must not answer for another fetch's.
	args := []string{"--extra-experimental-features", "nix-command", "copy", "--from", "http://" + ln.Addr().String(),
		"--option", "trusted-public-keys", trusted, "--option", "require-sigs", "true",
		"--option", "narinfo-cache-negative-ttl", "0", "--option", "narinfo-cache-positive-ttl", "0"}
	if _, stderr, err := run(ctx, nil, "nix", append(args, missing...)...); err != nil {
		if c.err != nil {
			err = c.err
		}
		return nil, fmt.Errorf("adding %s to this machine's store: %v: %s", strings.Join(missing, ", "), err, nixMessage(stderr))
	}
	return lacking, nil
}

// relay is the loopback binary cache Fetch has Nix read: the .narinfo
// files it read from peers, and their NARs passed on from the peer each
// came from. It names nothing else.
type relay struct {
	client *http.Client
	infos  map[string]*NarInfo  // by hash part
	from   map[string]CachePeer // by hash part

	mu  sync.Mutex
	err error // the first NAR a peer failed to send
}

func (c *relay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == "/nix-cache-info":
		w.Write([]byte(CacheInfo))
	case strings.HasSuffix(p, ".narinfo") && c.infos[strings.TrimSuffix(p[1:], ".narinfo")] != nil:
		w.Write(c.infos[strings.TrimSuffix(p[1:], ".narinfo")].Marshal())
	case strings.HasPrefix(p, "/nar/") && c.infos[strings.TrimSuffix(p[len("/nar/"):], ".nar")] != nil:
		hash := strings.TrimSuffix(p[len("/nar/"):], ".nar")
		ni, peer := c.infos[hash], c.from[hash]
		body, err := get(r.Context(), c.client, peer.URL+"/"+ni.URL)
		if err != nil {
			c.fail(fmt.Errorf("%s from %s at %s: %w", ni.StorePath, peer.Name, peer.URL, err))
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer body.Close()
		w.Header().Set("Content-Length", strconv.FormatInt(ni.NarSize, 10))
		// Nix checks the NAR's size and hash: one cut short fails there.
		if n, err := io.CopyBuffer(w, body, make([]byte, 256<<10)); err != nil || n != ni.NarSize {
			c.fail(fmt.Errorf("%s from %s at %s: %d of %d bytes: %v", ni.StorePath, peer.Name, peer.URL, n, ni.NarSize, err))
		}
	default:
		http.NotFound(w, r)
	}
}

func (c *relay) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
	}
}

func allExist(paths []string) bool {
	for _, p := range paths {
		if _, err := os.Lstat(p); err != nil {
			return false
		}
	}
	return true
}

// narInfoFrom gets path's .narinfo from the first of peers that serves
// it with a valid signature by trusted. A peer that could not be reached
// (its connection failed, or it did not answer in time) is recorded in
// unreachable and not asked again in the same fetch: a node that has just
// gone keeps its record a few seconds, and a closure has many paths.
func narInfoFrom(ctx context.Context, client *http.Client, peers []CachePeer, path, trusted string, unreachable map[string]error) (*NarInfo, CachePeer, error) {
	var tried []string
	for _, peer := range peers {
		if err := unreachable[peer.URL]; err != nil {
			tried = append(tried, fmt.Sprintf("%s at %s: %v", peer.Name, peer.URL, err))
			continue
		}
		ni, err := narInfoAt(ctx, client, peer, path, trusted)
		if err == nil {
			return ni, peer, nil
		}
		if ctx.Err() != nil {
			return nil, CachePeer{}, ctx.Err()
		}
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			unreachable[peer.URL] = err
		}
		tried = append(tried, fmt.Sprintf("%s at %s: %v", peer.Name, peer.URL, err))
	}
	return nil, CachePeer{}, fmt.Errorf("%s is not in this machine's Nix store and no other node serves it (%s)", path, strings.Join(tried, "; "))
}

var errNotThere = errors.New("not there")

func narInfoAt(ctx context.Context, client *http.Client, peer CachePeer, path, trusted string) (*NarInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, narInfoTimeout)
	defer cancel()
	body, err := get(ctx, client, peer.URL+"/"+HashPart(path)+".narinfo")
	if err != nil {
		return nil, err
	}
	defer body.Close()
	data, err := io.ReadAll(io.LimitReader(body, maxNarInfo))
	if err != nil {
		return nil, err
	}
	ni, err := ParseNarInfo(data)
	if err != nil {
		return nil, err
	}
	if ni.StorePath != path {
		return nil, fmt.Errorf("asked for %s, answered %s", path, ni.StorePath)
	}
	if !Verify(ni, trusted) {
		return nil, errors.New("not signed with the cluster's key")
	}
	return ni, nil
}

// get GETs url, returning the body of a 200 answer.
func get(ctx context.Context, client *http.Client, url string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return nil, errNotThere
		}
		return nil, fmt.Errorf("%s", resp.Status)
	}
	return resp.Body, nil
}
