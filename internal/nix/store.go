package nix

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// GCStats is what the Nix garbage collector freed.
type GCStats struct {
	// Paths is how many store paths it deleted.
	Paths int `json:"freed_paths"`
	// Bytes is how much it freed, as Nix reports it (to 0.01 MiB).
	Bytes int64 `json:"freed_bytes"`
}

var gcSummaryRE = regexp.MustCompile(`(\d+) store paths deleted, ([0-9.]+) MiB freed`)

// CollectGarbage runs the Nix garbage collector (nix-store --gc): it
// deletes every store path no GC root reaches, machine-wide.
func CollectGarbage(ctx context.Context) (GCStats, error) {
	out, stderr, err := run(ctx, nil, "nix-store", "--gc")
	if err != nil {
		return GCStats{}, fmt.Errorf("nix-store --gc: %v: %s", err, nixMessage(stderr))
	}
	var st GCStats
	if m := gcSummaryRE.FindStringSubmatch(string(out) + string(stderr)); m != nil {
		st.Paths, _ = strconv.Atoi(m[1])
		mib, _ := strconv.ParseFloat(m[2], 64)
		st.Bytes = int64(mib*(1<<20) + 0.5)
	}
	return st, nil
}

// sizes caches closure sizes: a store path's closure never changes.
var sizes sync.Map // string (joined paths) → int64

// ClosureSize returns the size in bytes of the union of the closures of the
// store paths among paths (others are ignored). Paths that are not valid
// (collected, or never copied here) count nothing.
func ClosureSize(ctx context.Context, paths []string) (int64, error) {
	set := map[string]bool{}
	for _, p := range paths {
		if sp := StorePathOf(p); sp != "" {
			set[sp] = true
		}
	}
	if len(set) == 0 || !Available() {
		return 0, nil
	}
	var valid []string
	for p := range set {
		valid = append(valid, p)
	}
	sort.Strings(valid)
	key := strings.Join(valid, " ")
	if v, ok := sizes.Load(key); ok {
		return v.(int64), nil
	}
	// Check validity first: --requisites fails on the first invalid path.
	out, _, err := run(ctx, nil, "nix-store", append([]string{"--check-validity", "--print-invalid"}, valid...)...)
	if err != nil {
		return 0, fmt.Errorf("nix-store --check-validity: %w", err)
	}
	invalid := map[string]bool{}
	for _, l := range strings.Fields(string(out)) {
		invalid[l] = true
	}
	valid = valid[:0]
	for _, p := range strings.Fields(key) {
		if !invalid[p] {
			valid = append(valid, p)
		}
	}
	if len(valid) == 0 {
		return 0, nil
	}
	out, stderr, err := run(ctx, nil, "nix-store", append([]string{"--query", "--requisites"}, valid...)...)
	if err != nil {
		return 0, fmt.Errorf("nix-store --query --requisites: %v: %s", err, nixMessage(stderr))
	}
	reqs := strings.Fields(string(out))
	out, stderr, err = run(ctx, nil, "nix-store", append([]string{"--query", "--size"}, reqs...)...)
	if err != nil {
		return 0, fmt.Errorf("nix-store --query --size: %v: %s", err, nixMessage(stderr))
	}
	var total int64
	for _, f := range strings.Fields(string(out)) {
		n, _ := strconv.ParseInt(f, 10, 64)
		total += n
	}
	if len(invalid) == 0 {
		sizes.Store(key, total)
	}
	return total, nil
}

// Copy copies the closures of the store paths among paths to another store
// (e.g. "ssh://root@host") with `nix copy`; Nix's output goes to log.
// Copying what the other store already has is quick and harmless.
func Copy(ctx context.Context, to string, paths []string, log io.Writer) error {
	set := map[string]bool{}
	var store []string
	for _, p := range paths {
		if sp := StorePathOf(p); sp != "" && !set[sp] {
			set[sp] = true
			store = append(store, sp)
		}
	}
	if len(store) == 0 {
		return nil
	}
	sort.Strings(store)
	args := append([]string{"--extra-experimental-features", "nix-command", "copy", "--to", to}, store...)
	_, stderr, err := run(ctx, log, "nix", args...)
	if err != nil {
		return fmt.Errorf("nix copy --to %s: %v\n%s", to, err, nixMessage(stderr))
	}
	return nil
}
