package nix

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	osexec "os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestBase32(t *testing.T) {
	requireNix(t)
	paths := buildScript(t, "base32")
	out, err := osexec.Command("nix-store", "--query", "--hash", paths[0]).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.TrimSpace(string(out)) // sha256:BASE32, as Nix prints it
	info, err := osexec.Command("nix", "--extra-experimental-features", "nix-command", "hash", "to-sri", want).Output()
	if err != nil {
		t.Fatal(err)
	}
	got, err := NarHashOf(strings.TrimSpace(string(info)))
	if err != nil || got != want {
		t.Fatalf("NarHashOf(%s) = %q, %v; want %q", info, got, err, want)
	}
	b, err := parseNarHash(want)
	if err != nil || base32Encode(b) != strings.TrimPrefix(want, "sha256:") {
		t.Fatalf("base32 round trip of %s: %x, %v", want, b, err)
	}
}

func TestParseNarInfoRefuses(t *testing.T) {
	good := "StorePath: /nix/store/4wwp0p1iac5xikn88v7cdy0flcsvjfz7-quotes\nURL: nar/4wwp0p1iac5xikn88v7cdy0flcsvjfz7.nar\nCompression: none\n" +
		"NarHash: sha256:0wb5mrl6a2h3q3ajfkpcwmcazx4ycnqf3i5bl2fghqaykd7y6afs\nNarSize: 5960328\nReferences: \n"
	if _, err := ParseNarInfo([]byte(good)); err != nil {
		t.Fatalf("a good narinfo: %v", err)
	}
	for name, tc := range map[string]struct{ from, to string }{
		"path outside the store": {"StorePath: /nix/store/4wwp0p1iac5xikn88v7cdy0flcsvjfz7-quotes", "StorePath: /etc/passwd"},
		"path with a slash":      {"-quotes\nURL", "-quotes/../../etc\nURL"},
		"URL out of the cache":   {"URL: nar/4wwp", "URL: ../4wwp"},
		"URL elsewhere":          {"URL: nar/", "URL: http://evil/"},
		"compressed":             {"Compression: none", "Compression: xz"},
		"no compression":         {"Compression: none\n", ""},
		"short hash":             {"NarHash: sha256:0", "NarHash: sha256:"},
		"bad size":               {"NarSize: 5960328", "NarSize: -1"},
		"bad reference":          {"References: ", "References: ../x"},
		"no size":                {"NarSize: 5960328\n", ""},
		"twice":                  {"NarSize: 5960328\n", "NarSize: 5960328\nNarSize: 1\n"},
		"bad signature":          {"References: \n", "References: \nSig: nocolon\n"},
	} {
		t.Run(name, func(t *testing.T) {
			bad := strings.Replace(good, tc.from, tc.to, 1)
			if bad == good {
				t.Fatal("the case changes nothing")
			}
			if ni, err := ParseNarInfo([]byte(bad)); err == nil {
				t.Fatalf("ParseNarInfo(%q) = %+v, want an error", bad, ni)
			}
		})
	}
}

func TestFingerprintAndSignature(t *testing.T) {
	ni := &NarInfo{StorePath: "/nix/store/4wwp0p1iac5xikn88v7cdy0flcsvjfz7-quotes", NarHash: "sha256:0wb5mrl6a2h3q3ajfkpcwmcazx4ycnqf3i5bl2fghqaykd7y6afs",
		NarSize: 12, References: []string{"/nix/store/2fiy30mv56338wj26y28wfcdxs0ys650-pinned", "/nix/store/4wwp0p1iac5xikn88v7cdy0flcsvjfz7-quotes"}}
	if got, want := ni.Fingerprint(), "1;/nix/store/4wwp0p1iac5xikn88v7cdy0flcsvjfz7-quotes;sha256:0wb5mrl6a2h3q3ajfkpcwmcazx4ycnqf3i5bl2fghqaykd7y6afs;12;/nix/store/2fiy30mv56338wj26y28wfcdxs0ys650-pinned,/nix/store/4wwp0p1iac5xikn88v7cdy0flcsvjfz7-quotes"; got != want {
		t.Fatalf("fingerprint %q, want %q", got, want)
	}
	key, err := NewSigningKey("hostel-test")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewSigningKey("hostel-test")
	key.Sign(ni)
	if !Verify(ni, key.Public()) {
		t.Fatal("a signature does not verify with its key")
	}
	if Verify(ni, other.Public()) {
		t.Fatal("a signature verifies with another key of the same name")
	}
	again, err := ParseSigningKey(key.String())
	if err != nil || again.Public() != key.Public() {
		t.Fatalf("ParseSigningKey(String()) = %v, %v", again, err)
	}
	ni.NarSize++
	if Verify(ni, key.Public()) {
		t.Fatal("a signature verifies for another size")
	}
}

// TestCacheSignedForNix serves a built path from Cache, fetches its
// .narinfo and NAR into a file:// cache, and has Nix verify
// it there: with the cache's key it passes, with another it fails.
func TestCacheSignedForNix(t *testing.T) {
	requireNix(t)
	paths := buildScript(t, "signed")
	top := StorePathOf(paths[0])
	key, _ := NewSigningKey("hostel-cluster-test")
	other, _ := NewSigningKey("hostel-cluster-test")
	served := map[string]bool{top: true}
	srv := httptest.NewServer(&Cache{Key: key, Serves: func(_ context.Context, p string) (bool, error) { return served[p], nil }})
	t.Cleanup(srv.Close)
	ctx := context.Background()
	peers := []CachePeer{{Name: "test", URL: srv.URL}}

	if _, _, err := narInfoFrom(ctx, srv.Client(), peers, top, other.Public(), map[string]error{}); err == nil || !strings.Contains(err.Error(), "not signed with the cluster's key") {
		t.Fatalf("a narinfo checked with another key: %v", err)
	}
	ni, _, err := narInfoFrom(ctx, srv.Client(), peers, top, key.Public(), map[string]error{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "nar"), 0o700)
	os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte(CacheInfo), 0o600)
	os.WriteFile(filepath.Join(dir, HashPart(top)+".narinfo"), ni.Marshal(), 0o600)
	nar, err := get(ctx, srv.Client(), srv.URL+"/"+ni.URL)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(nar)
	nar.Close()
	if err != nil || int64(len(b)) != ni.NarSize {
		t.Fatalf("the NAR: %d bytes, %v; want %d", len(b), err, ni.NarSize)
	}
	os.WriteFile(filepath.Join(dir, ni.URL), b, 0o600)
	verify := func(pub string) error {
		cmd := osexec.Command("nix", "--extra-experimental-features", "nix-command", "store", "verify", "--store", "file://"+dir,
			"--option", "trusted-public-keys", pub, "--sigs-needed", "1", top)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Logf("nix store verify: %s", out)
		}
		return err
	}
	if err := verify(key.Public()); err != nil {
		t.Fatalf("Nix does not take the cache's signature: %v", err)
	}
	if err := verify(other.Public()); err == nil {
		t.Fatal("Nix takes the signature with another key trusted")
	}

	for _, tc := range []struct{ name, path string }{
		{"a path not in the store", "/00000000000000000000000000000000.narinfo"},
		{"a path not served", "/" + "4wwp0p1iac5xikn88v7cdy0flcsvjfz7" + ".narinfo"},
		{"not a hash", "/..%2F..%2Fetc%2Fpasswd.narinfo"},
		{"a nar not served", "/nar/00000000000000000000000000000000.nar"},
	} {
		resp, err := srv.Client().Get(srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s (%s): %s, want 404", tc.name, tc.path, resp.Status)
		}
	}
	delete(served, top)
	if _, _, err := narInfoFrom(ctx, srv.Client(), peers, top, key.Public(), map[string]error{}); err == nil || !strings.Contains(err.Error(), "no other node serves it (test at "+srv.URL+": not there)") {
		t.Fatalf("a path the cache no longer serves: %v", err)
	}
}

func FuzzParseNarInfo(f *testing.F) {
	f.Add([]byte("StorePath: /nix/store/4wwp0p1iac5xikn88v7cdy0flcsvjfz7-quotes\nURL: nar/4wwp0p1iac5xikn88v7cdy0flcsvjfz7.nar\nCompression: none\n" +
		"NarHash: sha256:0wb5mrl6a2h3q3ajfkpcwmcazx4ycnqf3i5bl2fghqaykd7y6afs\nNarSize: 5960328\nReferences: 2fiy30mv56338wj26y28wfcdxs0ys650-pinned\nDeriver: v9apld65kxk84bqs83kszihdz174ja7a-quotes.drv\nSig: k:AAAA\n"))
	f.Add([]byte("StorePath: /nix/store/x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ni, err := ParseNarInfo(data)
		if err != nil {
			return
		}
		// What parses names nothing outside the store or the cache, and
		// reads back the same once written.
		if !validStorePath(ni.StorePath) || !narURLRE.MatchString(ni.URL) || strings.Contains(ni.URL, "..") {
			t.Fatalf("parsed %q to %+v", data, ni)
		}
		for _, r := range ni.References {
			if !validStorePath(r) {
				t.Fatalf("reference %q", r)
			}
		}
		again, err := ParseNarInfo(ni.Marshal())
		if err != nil {
			t.Fatalf("Marshal of %+v does not parse: %v\n%s", ni, err, ni.Marshal())
		}
		if !reflect.DeepEqual(again, ni) || !bytes.Equal(again.Marshal(), ni.Marshal()) {
			t.Fatalf("round trip: %+v, want %+v", again, ni)
		}
	})
}

// TestDumpNARAsNix: DumpNAR writes what nix-store --dump does, byte for
// byte, for a path with every kind of node: directories (nested, empty),
// files (executable or not, empty, of sizes that need padding), symbolic
// links.
func TestDumpNARAsNix(t *testing.T) {
	requireNix(t)
	file := writeSpec(t, `derivation { name = "nar-kinds"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir -p $out/bin $out/share/empty $out/a/b/c && /bin/echo -n 1234567 > $out/odd && : > $out/empty-file && /bin/printf '#!/bin/sh\\n' > $out/bin/run && /bin/chmod +x $out/bin/run && /bin/ln -s ../odd $out/a/b/link && /bin/ln -s /nonexistent $out/dangling && /bin/echo `+time.Now().Format("150405.000000000")+` > $out/a/b/c/Zz && /bin/echo x > $out/a/b/c/aa" ]; }`)
	out, err := osexec.Command("nix-build", "--no-out-link", "--option", "sandbox", "false", "--option", "substituters", "", file).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{strings.TrimSpace(string(out)), StorePathOf(buildScript(t, "narscript")[0])} {
		want, err := osexec.Command("nix-store", "--dump", path).Output()
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if err := DumpNAR(path, &got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("DumpNAR(%s): %d bytes differ from nix-store --dump's %d", path, got.Len(), len(want))
		}
	}
}

// TestFetch fetches a closure of two paths from a Cache into an empty
// store (a chroot store, NIX_REMOTE) through Fetch, its Nix checking the
// signatures; a second fetch has nothing to do; a peer whose key is not
// trusted, or that lacks a path, fails the fetch naming it.
func TestFetch(t *testing.T) {
	requireNix(t)
	stamp := time.Now().Format("150405.000000000")
	file := writeSpec(t, `let dep = derivation { name = "fetch-dep"; system = builtins.currentSystem; builder = "/bin/sh";
      args = [ "-c" "/bin/mkdir $out && /bin/echo `+stamp+` > $out/x" ]; };
    in derivation { name = "fetch-top"; system = builtins.currentSystem; builder = "/bin/sh";
      args = [ "-c" "/bin/mkdir $out && /bin/echo ${dep} > $out/dep" ]; }`)
	out, err := osexec.Command("nix-build", "--no-out-link", "--option", "sandbox", "false", "--option", "substituters", "", file).Output()
	if err != nil {
		t.Fatal(err)
	}
	top := strings.TrimSpace(string(out))
	key, _ := NewSigningKey("hostel-cluster-test")
	other, _ := NewSigningKey("hostel-cluster-test")
	cache := &Cache{Key: key}
	srv := httptest.NewServer(cache)
	t.Cleanup(srv.Close)
	// The cache reads the machine's store: ask it once before this
	// process's Nix commands go to the empty store (it keeps what it read
	// a minute; NARs it reads from the disk).
	if resp, err := srv.Client().Get(srv.URL + "/" + HashPart(top) + ".narinfo"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("narinfo: %v %v", resp, err)
	}
	store := t.TempDir()
	t.Setenv("NIX_REMOTE", "local?root="+store)
	ctx := context.Background()
	// A node that is going: it takes connections and drops them.
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gone.Close() })
	var dropped atomic.Int32
	go func() {
		for {
			c, err := gone.Accept()
			if err != nil {
				return
			}
			dropped.Add(1)
			c.Close()
		}
	}()
	goneURL := "http://" + gone.Addr().String()
	peers := func(context.Context) ([]CachePeer, error) {
		return []CachePeer{{Name: "gone", URL: goneURL}, {Name: "n1", URL: srv.URL}}, nil
	}

	if _, err := Fetch(ctx, srv.Client(), peers, []string{top + "/dep"}, other.Public()); err == nil ||
		!strings.Contains(err.Error(), top+" is not in this machine's Nix store and no other node serves it (gone at "+goneURL+": ") ||
		!strings.Contains(err.Error(), "n1 at "+srv.URL+": not signed with the cluster's key") {
		t.Fatalf("a fetch trusting another key: %v", err)
	}
	dropped.Store(0)
	added, err := Fetch(ctx, srv.Client(), peers, []string{top + "/dep"}, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if n := dropped.Load(); n != 1 {
		t.Errorf("the node that is going was asked %d times for a closure of two paths, want once", n)
	}
	if len(added) != 2 {
		t.Errorf("added %v, want the closure's two paths", added)
	}
	if missing, err := Missing(ctx, []string{top}); err != nil || len(missing) != 0 {
		t.Fatalf("after the fetch the store lacks %v (%v)", missing, err)
	}
	if added, err := Fetch(ctx, srv.Client(), peers, []string{top}, key.Public()); err != nil || len(added) != 0 {
		t.Errorf("a second fetch: %v, %v; want nothing to do", added, err)
	}
}
