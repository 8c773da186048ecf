package source

import (
	"context"
	"errors"
	"io"
	"os"

	"hostel/internal/nix"
	"hostel/internal/spec"
)

// BuildLog receives Nix's progress and build output while a hostel.nix is
// built, as Nix prints it.
var BuildLog io.Writer = os.Stderr

// evalNix evaluates a hostel.nix to its canonical JSON, decodes it and
// builds every derivation it references, so that the store paths in the
// spec exist. An evaluation error is a *spec.Error (exit 2); a build
// failure is a *nix.BuildError (exit 1).
func evalNix(file string) (*spec.Spec, error) {
	if _, err := os.Stat(file); err != nil {
		return nil, &spec.Error{File: file, Msg: describe(err)}
	}
	ctx := context.Background()
	ev, err := nix.Evaluate(ctx, file)
	var ee *nix.EvalError
	if errors.As(err, &ee) {
		return nil, &spec.Error{File: file, Service: ee.Service, Msg: "nix evaluation failed:\n" + ee.Log}
	}
	if err != nil {
		return nil, err
	}
	// Validate before building: a spec error needs no build to be found.
	s, err := decodeIn(file, ev.JSON)
	if err != nil {
		return nil, err
	}
	if err := nix.Build(ctx, ev, BuildLog); err != nil {
		return nil, err
	}
	return s, nil
}
