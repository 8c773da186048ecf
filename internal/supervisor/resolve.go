package supervisor

// ResolveExec returns the program a service runs for exec[0] (or
// release[0]) with package directory dir ("" for none), found as a start
// finds it: absolute, relative to dir, or on the services' PATH. The daemon
// checks programs with it before a deploy changes anything.
func ResolveExec(dir, name string) (string, error) { return resolveExec(dir, name) }
