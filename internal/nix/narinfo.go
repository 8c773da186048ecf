package nix

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// What a node of a cluster serves its peers on the node-to-node port: a
// Nix binary cache (the protocol of cache.nixos.org and `nix copy --to
// file://`), whose .narinfo files describe store paths and are signed
// with the cluster's Nix signing key, so that the Nix of the node that
// fetches verifies each path as it adds it to its store.

// CacheInfo is the cache's /nix-cache-info: a store of /nix/store, and
// the lowest priority, so that no Nix prefers it to another cache.
const CacheInfo = "StoreDir: /nix/store\nWantMassQuery: 0\nPriority: 80\n"

// NarInfo is one store path's .narinfo: what Nix needs to add it to a
// store from its NAR (nix-store --dump), and who vouches for it.
type NarInfo struct {
	// StorePath is the path described (/nix/store/HASH-NAME).
	StorePath string
	// URL is where the NAR is, relative to the cache ("nar/HASH.nar").
	URL string
	// Compression is the NAR's ("none": served as nix-store --dump
	// writes it).
	Compression string
	// NarHash is the SHA-256 of the NAR, in Nix's base-32
	// ("sha256:…"): the form the fingerprint signs.
	NarHash string
	// NarSize is the NAR's size in bytes.
	NarSize int64
	// References are the store paths the path refers to (full paths;
	// a .narinfo lists their base names), sorted as Nix lists them.
	References []string
	// Deriver is the derivation that built the path (a full path), or
	// "" if unknown.
	Deriver string
	// Sigs are "KEYNAME:BASE64" signatures of the fingerprint.
	Sigs []string
}

// hashPartRE is a store path's hash part: 32 characters of Nix's base 32.
var hashPartRE = regexp.MustCompile(`^[0-9a-df-np-sv-z]{32}$`)

// storeBaseRE is a store path's base name: its hash part, a dash, a name.
var storeBaseRE = regexp.MustCompile(`^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+$`)

// narURLRE is the one form of NAR URL a .narinfo of this cache has: no
// other directory, no way out of the cache's.
var narURLRE = regexp.MustCompile(`^nar/[0-9a-z]+\.nar$`)

// IsHashPart reports whether s is a store path's hash part.
func IsHashPart(s string) bool { return hashPartRE.MatchString(s) }

// HashPart returns the hash part of a store path.
func HashPart(path string) string {
	base := strings.TrimPrefix(path, StoreDir)
	h, _, _ := strings.Cut(base, "-")
	return h
}

// validStorePath reports whether p is /nix/store/ followed by a valid
// base name and nothing else.
func validStorePath(p string) bool {
	return strings.HasPrefix(p, StoreDir) && storeBaseRE.MatchString(p[len(StoreDir):])
}

// Fingerprint is what a signature signs: "1;STOREPATH;NARHASH;NARSIZE;
// REF1,REF2…" with full reference paths (Nix's ValidPathInfo::fingerprint).
func (ni *NarInfo) Fingerprint() string {
	return "1;" + ni.StorePath + ";" + ni.NarHash + ";" + strconv.FormatInt(ni.NarSize, 10) + ";" + strings.Join(ni.References, ",")
}

// Marshal writes the .narinfo.
func (ni *NarInfo) Marshal() []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "StorePath: %s\nURL: %s\nCompression: %s\nNarHash: %s\nNarSize: %d\n",
		ni.StorePath, ni.URL, ni.Compression, ni.NarHash, ni.NarSize)
	refs := make([]string, len(ni.References))
	for i, r := range ni.References {
		refs[i] = strings.TrimPrefix(r, StoreDir)
	}
	fmt.Fprintf(&b, "References: %s\n", strings.Join(refs, " "))
	if ni.Deriver != "" {
		fmt.Fprintf(&b, "Deriver: %s\n", strings.TrimPrefix(ni.Deriver, StoreDir))
	}
	for _, s := range ni.Sigs {
		fmt.Fprintf(&b, "Sig: %s\n", s)
	}
	return []byte(b.String())
}

// ParseNarInfo reads a .narinfo as this cache writes it (and as Nix
// does): every field checked, since what a peer sends names files the
// fetch writes. Fields this cache does not write (FileHash, FileSize, CA,
// System) are ignored, as Nix ignores what it does not know.
func ParseNarInfo(data []byte) (*NarInfo, error) {
	ni := &NarInfo{}
	seen := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		name, value, ok := strings.Cut(line, ": ")
		if !ok {
			return nil, fmt.Errorf("narinfo: line %q: want NAME: VALUE", line)
		}
		if seen[name] && name != "Sig" {
			return nil, fmt.Errorf("narinfo: %s given twice", name)
		}
		seen[name] = true
		switch name {
		case "StorePath":
			if !validStorePath(value) {
				return nil, fmt.Errorf("narinfo: StorePath %q is not a store path", value)
			}
			ni.StorePath = value
		case "URL":
			if !narURLRE.MatchString(value) {
				return nil, fmt.Errorf("narinfo: URL %q: want nar/NAME.nar", value)
			}
			ni.URL = value
		case "Compression":
			if value != "none" {
				return nil, fmt.Errorf("narinfo: Compression %q: only none is served between nodes", value)
			}
			ni.Compression = value
		case "NarHash":
			if _, err := parseNarHash(value); err != nil {
				return nil, fmt.Errorf("narinfo: NarHash: %w", err)
			}
			ni.NarHash = value
		case "NarSize":
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("narinfo: NarSize %q is not a size", value)
			}
			ni.NarSize = n
		case "References":
			for _, r := range strings.Fields(value) {
				if !storeBaseRE.MatchString(r) {
					return nil, fmt.Errorf("narinfo: reference %q is not a store path's name", r)
				}
				ni.References = append(ni.References, StoreDir+r)
			}
		case "Deriver":
			if value != "unknown-deriver" {
				if !storeBaseRE.MatchString(value) {
					return nil, fmt.Errorf("narinfo: Deriver %q is not a store path's name", value)
				}
				ni.Deriver = StoreDir + value
			}
		case "Sig":
			if _, _, err := splitKey(value); err != nil {
				return nil, fmt.Errorf("narinfo: Sig: %w", err)
			}
			ni.Sigs = append(ni.Sigs, value)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("narinfo: %w", err)
	}
	for _, f := range []string{"StorePath", "URL", "NarHash", "NarSize"} {
		if !seen[f] {
			return nil, fmt.Errorf("narinfo: no %s", f)
		}
	}
	if ni.Compression == "" {
		return nil, errors.New("narinfo: no Compression (Nix would read bzip2)")
	}
	return ni, nil
}

// parseNarHash reads "sha256:" and 52 characters of Nix's base 32.
func parseNarHash(s string) ([]byte, error) {
	rest, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(rest) != base32Len(32) {
		return nil, fmt.Errorf("%q: want sha256: and 52 base-32 characters", s)
	}
	b, err := base32Decode(rest, 32)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", s, err)
	}
	return b, nil
}

// NarHashOf converts a NAR hash as `nix path-info --json` prints it (SRI:
// "sha256-BASE64") to the base-32 form of .narinfo files and
// fingerprints; the base-32 form is returned as it is.
func NarHashOf(s string) (string, error) {
	if _, err := parseNarHash(s); err == nil {
		return s, nil
	}
	rest, ok := strings.CutPrefix(s, "sha256-")
	if !ok {
		return "", fmt.Errorf("NAR hash %q: want sha256-BASE64", s)
	}
	b, err := base64.StdEncoding.DecodeString(rest)
	if err != nil || len(b) != 32 {
		return "", fmt.Errorf("NAR hash %q: want 32 bytes in base 64", s)
	}
	return "sha256:" + base32Encode(b), nil
}

// nixBase32 is Nix's alphabet of base 32 (no e, o, u, t).
const nixBase32 = "0123456789abcdfghijklmnpqrsvwxyz"

func base32Len(n int) int { return (n*8-1)/5 + 1 }

// base32Encode is Nix's printHash32: the last 5 bits first.
func base32Encode(b []byte) string {
	n := base32Len(len(b))
	out := make([]byte, 0, n)
	for i := n - 1; i >= 0; i-- {
		bit := i * 5
		j, k := bit/8, uint(bit%8)
		c := b[j] >> k
		if j+1 < len(b) {
			c |= b[j+1] << (8 - k)
		}
		out = append(out, nixBase32[c&0x1f])
	}
	return string(out)
}

// base32Decode is base32Encode's inverse for size bytes.
func base32Decode(s string, size int) ([]byte, error) {
	if len(s) != base32Len(size) {
		return nil, fmt.Errorf("want %d base-32 characters", base32Len(size))
	}
	b := make([]byte, size)
	for i := 0; i < len(s); i++ {
		digit := strings.IndexByte(nixBase32, s[len(s)-1-i])
		if digit < 0 {
			return nil, fmt.Errorf("%q is not a base-32 character", s[len(s)-1-i])
		}
		bit := i * 5
		j, k := bit/8, uint(bit%8)
		b[j] |= byte(digit << k)
		if j+1 < size {
			b[j+1] |= byte(digit >> (8 - k))
		} else if digit>>(8-k) != 0 {
			return nil, errors.New("base-32 value too large")
		}
	}
	return b, nil
}

// SigningKey is a Nix signing key (ed25519): what `nix key
// generate-secret` makes, "NAME:BASE64" of the 64-byte private key.
type SigningKey struct {
	Name string
	priv ed25519.PrivateKey
}

// NewSigningKey makes a key named name.
func NewSigningKey(name string) (*SigningKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &SigningKey{Name: name, priv: priv}, nil
}

// ParseSigningKey reads a secret key in Nix's format.
func ParseSigningKey(s string) (*SigningKey, error) {
	name, b, err := splitKey(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("nix signing key: %w", err)
	}
	if len(b) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("nix signing key %q: want %d bytes, not %d", name, ed25519.PrivateKeySize, len(b))
	}
	return &SigningKey{Name: name, priv: ed25519.PrivateKey(b)}, nil
}

// String is the secret key in Nix's format.
func (k *SigningKey) String() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.priv)
}

// Public is the public key in Nix's format, as trusted-public-keys takes
// it.
func (k *SigningKey) Public() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.priv.Public().(ed25519.PublicKey))
}

// Sign sets ni's signature by k (replacing any other).
func (k *SigningKey) Sign(ni *NarInfo) {
	sig := ed25519.Sign(k.priv, []byte(ni.Fingerprint()))
	ni.Sigs = []string{k.Name + ":" + base64.StdEncoding.EncodeToString(sig)}
}

// Verify reports whether ni carries a valid signature by the public key
// pub (Nix's format).
func Verify(ni *NarInfo, pub string) bool {
	name, key, err := splitKey(pub)
	if err != nil || len(key) != ed25519.PublicKeySize {
		return false
	}
	fp := []byte(ni.Fingerprint())
	for _, s := range ni.Sigs {
		n, sig, err := splitKey(s)
		if err == nil && n == name && ed25519.Verify(ed25519.PublicKey(key), fp, sig) {
			return true
		}
	}
	return false
}

// splitKey reads "NAME:BASE64" (a key or a signature).
func splitKey(s string) (string, []byte, error) {
	name, b64, ok := strings.Cut(s, ":")
	if !ok || name == "" {
		return "", nil, fmt.Errorf("%q: want NAME:BASE64", s)
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", nil, fmt.Errorf("%q: want NAME:BASE64", s)
	}
	return name, b, nil
}
