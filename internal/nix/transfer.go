package nix

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sort"
	"strings"
)

// What `hostel deploy --api` copies: the closures of a spec's store paths,
// as one `nix-store --export` stream the daemon's machine reads with
// `nix-store --import` — what `nix copy` does over SSH, through the remote
// API's HTTPS instead.

// TopPaths returns the distinct top-level store paths among paths, sorted;
// an error names one that is not a store path at all.
func TopPaths(paths []string) ([]string, error) {
	set := map[string]bool{}
	var out []string
	for _, p := range paths {
		sp := StorePathOf(p)
		if sp == "" || !storePathRE.MatchString(sp) || storePathRE.FindString(sp) != sp {
			return nil, fmt.Errorf("%q is not a Nix store path", p)
		}
		if !set[sp] {
			set[sp] = true
			out = append(out, sp)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Missing returns those of paths (store paths) that are not valid in this
// machine's store, in the order given.
func Missing(ctx context.Context, paths []string) ([]string, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	out, stderr, err := run(ctx, nil, "nix-store", append([]string{"--check-validity", "--print-invalid"}, paths...)...)
	if err != nil {
		return nil, fmt.Errorf("nix-store --check-validity: %v: %s", err, nixMessage(stderr))
	}
	return strings.Fields(string(out)), nil
}

// Closure returns the closure of paths in this machine's store, each path
// after those it references (nix-store -qR's topological order), which is
// the order an import takes them in.
func Closure(ctx context.Context, paths []string) ([]string, error) {
	out, stderr, err := run(ctx, nil, "nix-store", append([]string{"--query", "--requisites"}, paths...)...)
	if err != nil {
		return nil, fmt.Errorf("nix-store --query --requisites: %v: %s", err, nixMessage(stderr))
	}
	return strings.Fields(string(out)), nil
}

// Export writes paths (in the order given, as Closure orders them) to w
// as one `nix-store --export` stream.
func Export(ctx context.Context, paths []string, w io.Writer) error {
	return stream(ctx, nil, w, "nix-store", append([]string{"--export"}, paths...)...)
}

// Import adds the paths of a `nix-store --export` stream read from r to
// this machine's store and returns them. Nix checks each path's content
// against its hash as it reads it; a path whose references are neither
// valid nor earlier in the stream is refused.
func Import(ctx context.Context, r io.Reader) ([]string, error) {
	var out bytes.Buffer
	if err := stream(ctx, r, &out, "nix-store", "--import"); err != nil {
		return nil, err
	}
	return strings.Fields(out.String()), nil
}

// stream runs a Nix tool with stdin from in (if not nil) and stdout to
// out.
func stream(ctx context.Context, in io.Reader, out io.Writer, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, append(Options(), args...)...)
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = in, out, &stderr
	err := cmd.Run()
	if errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("%s is not installed: install Nix (Debian: apt-get install nix-bin)", name)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, args[0], err, nixMessage(stderr.Bytes()))
	}
	return nil
}
