package nix

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// PathInfos returns the .narinfo of each path of the closure of a valid
// store path, as this machine's store describes them (`nix path-info
// --json --recursive`: one process for the whole closure, which a fetcher
// asks for path after path), unsigned, by path, each NAR at nar/HASH.nar
// uncompressed.
func PathInfos(ctx context.Context, path string) (map[string]*NarInfo, error) {
	out, stderr, err := run(ctx, nil, "nix", "--extra-experimental-features", "nix-command", "path-info", "--json", "--recursive", path)
	if err != nil {
		return nil, fmt.Errorf("nix path-info %s: %v: %s", path, err, nixMessage(stderr))
	}
	var infos []struct {
		Path       string   `json:"path"`
		Valid      *bool    `json:"valid"`
		NarHash    string   `json:"narHash"`
		NarSize    int64    `json:"narSize"`
		References []string `json:"references"`
		Deriver    string   `json:"deriver"`
	}
	if err := json.Unmarshal(out, &infos); err != nil {
		return nil, fmt.Errorf("nix path-info %s printed something other than JSON: %w", path, err)
	}
	all := make(map[string]*NarInfo, len(infos))
	for _, in := range infos {
		if in.Valid != nil && !*in.Valid {
			continue
		}
		hash, err := NarHashOf(in.NarHash)
		if err != nil {
			return nil, fmt.Errorf("nix path-info %s: %w", in.Path, err)
		}
		all[in.Path] = &NarInfo{StorePath: in.Path, URL: "nar/" + HashPart(in.Path) + ".nar", Compression: "none",
			NarHash: hash, NarSize: in.NarSize, References: in.References, Deriver: in.Deriver}
	}
	if all[path] == nil {
		return nil, fmt.Errorf("%s is not valid in this machine's store", path)
	}
	return all, nil
}

// infoTTL is how long Cache keeps what `nix path-info` said of a path: a
// fetch of a closure asks for its paths within it. (A valid path's
// description changes only if it is collected and built again, with other
// bytes.)
const infoTTL = time.Minute

// Cache serves this machine's store as a Nix binary cache: /nix-cache-info,
// /HASH.narinfo (signed with Key) and /nar/HASH.nar (nix-store --dump,
// uncompressed, streamed). Only store paths are named (by their hash
// part), and only those Serves allows are served: nothing outside
// /nix/store is ever read.
type Cache struct {
	// Key signs every .narinfo served.
	Key *SigningKey
	// Serves reports whether the valid store path may be served; nil
	// serves every valid path.
	Serves func(ctx context.Context, path string) (bool, error)
	// Logf, if not nil, reports failures to serve.
	Logf func(format string, args ...any)

	mu sync.Mutex
	// infos are the .narinfo files read lately (PathInfos), by hash
	// part, with when they were read.
	infos map[string]cachedInfo
}

type cachedInfo struct {
	ni *NarInfo
	at time.Time
}

// IsCacheRequest reports whether r asks for a file of the binary cache
// (Cache serves it), which nothing else on the same port is named like.
func IsCacheRequest(r *http.Request) bool {
	p := r.URL.Path
	return p == "/nix-cache-info" || strings.HasPrefix(p, "/nar/") ||
		(strings.HasSuffix(p, ".narinfo") && strings.Count(p, "/") == 1)
}

func (c *Cache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "a binary cache is read with GET", http.StatusMethodNotAllowed)
		return
	}
	p := r.URL.Path
	switch {
	case p == "/nix-cache-info":
		w.Header().Set("Content-Type", "text/x-nix-cache-info")
		w.Write([]byte(CacheInfo))
	case strings.HasSuffix(p, ".narinfo"):
		path, ok := c.lookup(w, r, strings.TrimSuffix(p[1:], ".narinfo"))
		if !ok {
			return
		}
		ni, err := c.info(r.Context(), path)
		if err != nil {
			c.fail(w, path, err)
			return
		}
		signed := *ni
		c.Key.Sign(&signed)
		w.Header().Set("Content-Type", "text/x-nix-narinfo")
		w.Write(signed.Marshal())
	case strings.HasPrefix(p, "/nar/") && strings.HasSuffix(p, ".nar"):
		path, ok := c.lookup(w, r, strings.TrimSuffix(strings.TrimPrefix(p, "/nar/"), ".nar"))
		if !ok {
			return
		}
		// No Content-Length: asking Nix for the size costs a process,
		// and the fetcher knows it from the .narinfo (and checks it).
		w.Header().Set("Content-Type", "application/x-nix-nar")
		if r.Method == http.MethodHead {
			return
		}
		// Once the headers are out, a failure can only cut the body
		// short, which the fetcher sees (its size, then Nix its hash).
		if err := DumpNAR(path, w); err != nil && c.Logf != nil && r.Context().Err() == nil {
			c.Logf("nix cache: %s: %v", path, err)
		}
	default:
		http.NotFound(w, r)
	}
}

// info returns the .narinfo of the valid store path path, unsigned: from
// those read lately, or read with those of its closure.
func (c *Cache) info(ctx context.Context, path string) (*NarInfo, error) {
	hash := HashPart(path)
	c.mu.Lock()
	if ci, ok := c.infos[hash]; ok && ci.ni.StorePath == path && time.Since(ci.at) < infoTTL {
		c.mu.Unlock()
		return ci.ni, nil
	}
	c.mu.Unlock()
	all, err := PathInfos(ctx, path)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.infos == nil {
		c.infos = map[string]cachedInfo{}
	}
	for h, ci := range c.infos {
		if now.Sub(ci.at) >= infoTTL {
			delete(c.infos, h)
		}
	}
	for p, ni := range all {
		c.infos[HashPart(p)] = cachedInfo{ni: ni, at: now}
	}
	return all[path], nil
}

// lookup finds the valid store path whose hash part is hash and that the
// cache serves, answering 404 when there is none.
func (c *Cache) lookup(w http.ResponseWriter, r *http.Request, hash string) (string, bool) {
	if !IsHashPart(hash) {
		http.NotFound(w, r)
		return "", false
	}
	var path string
	c.mu.Lock()
	if ci, ok := c.infos[hash]; ok {
		path = ci.ni.StorePath // read lately: no need to list the store
	}
	c.mu.Unlock()
	if path == "" {
		matches, _ := filepath.Glob(StoreDir + hash + "-*")
		for _, m := range matches {
			if validStorePath(m) && !strings.HasSuffix(m, ".lock") {
				path = m
				break
			}
		}
	}
	if path == "" {
		http.NotFound(w, r)
		return "", false
	}
	if c.Serves != nil {
		ok, err := c.Serves(r.Context(), path)
		if err != nil {
			c.fail(w, path, err)
			return "", false
		}
		if !ok {
			http.NotFound(w, r)
			return "", false
		}
	}
	return path, true
}

func (c *Cache) fail(w http.ResponseWriter, path string, err error) {
	if c.Logf != nil && !errors.Is(err, context.Canceled) {
		c.Logf("nix cache: %s: %v", path, err)
	}
	http.Error(w, "cannot serve "+path, http.StatusInternalServerError)
}
