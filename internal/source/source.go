// Package source reads what a user deploys: the spec file in their
// repository, and the inputs that shape versions beyond the spec (the
// contents of packages that are plain directories).
package source

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"hostel/internal/nix"
	"hostel/internal/spec"
)

// Loaded is a spec read from a file, with its inputs.
type Loaded struct {
	// File is the path as the user named it, for messages.
	File   string
	Spec   *spec.Spec
	Inputs spec.Inputs
	// Secrets are the ciphertexts of the secrets the services list, by name.
	Secrets map[string][]byte
}

// Find returns the spec file to use when the user names none: hostel.nix,
// else hostel.json, in dir.
func Find(dir string) (string, error) {
	for _, name := range []string{"hostel.nix", "hostel.json"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return name, nil
		}
	}
	return "", &spec.Error{File: "hostel.json", Msg: "no hostel.nix or hostel.json in " + dir}
}

// Load reads, decodes and validates the spec at file, and gathers its inputs.
// Every error about the user's input is a *spec.Error.
func Load(file string) (*Loaded, error) {
	decode := decodeJSON
	if strings.HasSuffix(file, ".nix") {
		decode = evalNix // evaluate and build: the JSON then holds store paths
	}
	s, err := decode(file)
	if err != nil {
		return nil, err
	}
	in, err := Gather(file, s)
	if err != nil {
		return nil, err
	}
	secs, err := GatherSecrets(file, s, &in)
	if err != nil {
		return nil, err
	}
	return &Loaded{File: file, Spec: s, Inputs: in, Secrets: secs}, nil
}

// decodeJSON reads and decodes a hostel.json.
func decodeJSON(file string) (*spec.Spec, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, &spec.Error{File: file, Msg: describe(err)}
	}
	return decodeIn(file, data)
}

// decodeIn decodes and validates the spec data read from file, with
// relative package paths taken from file's directory.
func decodeIn(file string, data []byte) (*spec.Spec, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, err
	}
	return spec.DecodeIn(file, data, filepath.Dir(abs))
}

// Gather computes the inputs of s: a content digest for every package that
// is a plain directory.
func Gather(file string, s *spec.Spec) (spec.Inputs, error) {
	var in spec.Inputs
	for _, name := range s.Names() {
		pkg := s.Services[name].Package
		// A store path is identified by its path alone, which already
		// hashes its whole closure.
		if pkg == "" || strings.HasPrefix(pkg, nix.StoreDir) {
			continue
		}
		d, err := DirDigest(pkg)
		if err != nil {
			return in, &spec.Error{File: file, Service: name, Field: "package", Msg: describe(err)}
		}
		if in.Digests == nil {
			in.Digests = map[string]string{}
		}
		in.Digests[name] = d
	}
	return in, nil
}

// DirDigest hashes a directory tree: every path, its type and mode, and the
// content of files and the targets of links, in lexical order.
func DirDigest(dir string) (string, error) {
	info, err := os.Stat(dir)
	if err != nil {
		return "", err
	}
	if !info.IsDir() {
		return "", fmt.Errorf("%s is not a directory", dir)
	}
	h := sha256.New()
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%q %o\n", rel, info.Mode())
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "-> %q\n", target)
		case info.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(h, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func describe(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Path + ": " + pe.Err.Error()
	}
	return err.Error()
}

// Programs checks that the program of every service's exec and release can
// run on this machine: it exists, is a regular file and is executable. The
// daemon checks before a plan or deploy changes anything, so that a wrong
// program is a spec error (exit 2) rather than a failed start.
type Programs struct {
	// Resolve finds the program for exec[0] in package directory dir (""
	// for none) as a start will find it; an error means there is none.
	Resolve func(dir, name string) (string, error)
	// Planned is for a plan, which may see store paths before they are
	// here: plan --target does not copy closures (a deploy does, before it
	// checks). A program in an absent store path is then not checked.
	Planned bool
	// Fetched is for a node of a cluster whose nodes take the store paths
	// they lack from one another (the cluster's binary cache): the store
	// need not hold what another node runs, and a program in an absent
	// store path is not checked here — the node that runs it fetches it,
	// and a path no node has fails that start.
	Fetched bool
}

// Check checks the programs of s, read from file.
func (p Programs) Check(file string, s *spec.Spec) error {
	for _, name := range s.Names() {
		svc := s.Services[name]
		for _, c := range []struct {
			field string
			argv  []string
		}{{"exec", svc.Exec}, {"release", svc.Release}} {
			if len(c.argv) == 0 {
				continue
			}
			fail := func(msg string) error {
				return &spec.Error{File: file, Service: name, Field: c.field + "[0]", Msg: msg}
			}
			prog, err := p.Resolve(svc.Package, c.argv[0])
			if err != nil {
				return fail(err.Error())
			}
			if sp := nix.StorePathOf(prog); (p.Planned || p.Fetched) && sp != "" && !exists(sp) {
				continue
			}
			if msg := notProgram(prog); msg != "" {
				return fail(msg)
			}
		}
	}
	return nil
}

// notProgram says what keeps path from being run as a program, or "".
func notProgram(path string) string {
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Sprintf("%s does not exist", path)
	case err != nil:
		return describe(err)
	case info.IsDir():
		return fmt.Sprintf("%s is a directory", path)
	case !info.Mode().IsRegular():
		return fmt.Sprintf("%s is not a regular file", path)
	case info.Mode()&0o111 == 0:
		return fmt.Sprintf("%s is not executable", path)
	}
	return ""
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
