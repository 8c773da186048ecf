package nix

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// CachePeer is a binary cache Fetch may take store paths from: another
// node's (Cache, on its node-to-node port).
type CachePeer struct {
	// Name names it in errors (a node's name).
	Name string
	// URL is the cache's base URL ("https://HOST:PORT").
	URL string
}

// maxNarInfo bounds a .narinfo read from a peer.
const maxNarInfo = 1 << 20

// Fetch adds the closures of paths (store paths) that this machine's store
// lacks from the caches of peers, each path from the first peer that
// serves it, through client: the .narinfo files and the NARs this store
// lacks go to a binary cache in a new directory under dir, from which
// `nix copy --from file://…` takes them with trusted (a public key in Nix's
// format) the only key trusted — Nix checks every path's signature and
// its NAR's hash, and adds nothing that fails. It returns the paths
// added. An error names the path and the peers asked.
func Fetch(ctx context.Context, client *http.Client, peers []CachePeer, paths []string, trusted, dir string) ([]string, error) {
	top, err := TopPaths(paths)
	if err != nil {
		return nil, err
	}
	missing, err := Missing(ctx, top)
	if err != nil || len(missing) == 0 {
		return nil, err
	}
	if len(peers) == 0 {
		return nil, fmt.Errorf("%s is not in this machine's Nix store, and no other node is there to take it from", missing[0])
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cache, err := os.MkdirTemp(dir, "nix-fetch-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(cache)
	if err := os.Mkdir(filepath.Join(cache, "nar"), 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cache, "nix-cache-info"), []byte(CacheInfo), 0o600); err != nil {
		return nil, err
	}
	// Every .narinfo of the closure, even of paths this store has: nix
	// copy reads the whole closure from the cache before it skips those.
	from := map[string]CachePeer{}
	infos := map[string]*NarInfo{}
	var closure []string
	queue := append([]string(nil), missing...)
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if infos[p] != nil {
			continue
		}
		ni, peer, err := narInfoFrom(ctx, client, peers, p, trusted)
		if err != nil {
			return nil, err
		}
		infos[p], from[p] = ni, peer
		closure = append(closure, p)
		if err := os.WriteFile(filepath.Join(cache, HashPart(p)+".narinfo"), ni.Marshal(), 0o600); err != nil {
			return nil, err
		}
		for _, ref := range ni.References {
			if infos[ref] == nil {
				queue = append(queue, ref)
			}
		}
	}
	lacking, err := Missing(ctx, closure)
	if err != nil {
		return nil, err
	}
	for _, p := range lacking {
		if err := narFrom(ctx, client, from[p], infos[p], filepath.Join(cache, infos[p].URL)); err != nil {
			return nil, err
		}
	}
	args := []string{"--extra-experimental-features", "nix-command", "copy", "--from", "file://" + cache,
		"--option", "trusted-public-keys", trusted, "--option", "require-sigs", "true"}
	if _, stderr, err := run(ctx, nil, "nix", append(args, missing...)...); err != nil {
		return nil, fmt.Errorf("adding %s to this machine's store: %v: %s", strings.Join(missing, ", "), err, nixMessage(stderr))
	}
	return lacking, nil
}

// narInfoFrom gets path's .narinfo from the first of peers that serves
// it with a valid signature by trusted.
func narInfoFrom(ctx context.Context, client *http.Client, peers []CachePeer, path, trusted string) (*NarInfo, CachePeer, error) {
	var tried []string
	for _, peer := range peers {
		ni, err := narInfoAt(ctx, client, peer, path, trusted)
		if err == nil {
			return ni, peer, nil
		}
		if ctx.Err() != nil {
			return nil, CachePeer{}, ctx.Err()
		}
		tried = append(tried, fmt.Sprintf("%s at %s: %v", peer.Name, peer.URL, err))
	}
	return nil, CachePeer{}, fmt.Errorf("%s is not in this machine's Nix store and no other node serves it (%s)", path, strings.Join(tried, "; "))
}

var errNotThere = errors.New("not there")

func narInfoAt(ctx context.Context, client *http.Client, peer CachePeer, path, trusted string) (*NarInfo, error) {
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

// narFrom writes ni's NAR, from peer, to file; a NAR of another size than
// ni says is refused here (its hash is Nix's to check).
func narFrom(ctx context.Context, client *http.Client, peer CachePeer, ni *NarInfo, file string) error {
	body, err := get(ctx, client, peer.URL+"/"+ni.URL)
	if err != nil {
		return fmt.Errorf("%s from %s at %s: %w", ni.StorePath, peer.Name, peer.URL, err)
	}
	defer body.Close()
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, io.LimitReader(body, ni.NarSize+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != ni.NarSize {
		err = fmt.Errorf("its NAR has %d bytes, not %d", n, ni.NarSize)
	}
	if err != nil {
		return fmt.Errorf("%s from %s at %s: %w", ni.StorePath, peer.Name, peer.URL, err)
	}
	return nil
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
