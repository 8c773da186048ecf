package spec

import (
	"fmt"
	"strings"
)

// Variables in exec and release arguments, by systemd's rule for
// ExecStart (systemd.service(5), "Command lines"), so that an app's unit
// file reads the same here:
//
//   - ${NAME}, anywhere in an argument, is the value of NAME in the
//     process's environment;
//   - $NAME, as a whole argument, is that value too: one argument, never
//     split at whitespace (where systemd splits it);
//   - $$ is a literal $;
//   - any other $ stays as written: $NAME inside a longer argument (a
//     shell reads it from its environment, sh -c 'exec app --port
//     "$PORT"'), $1, $@, $?, a lone $.
//
// NAME is [A-Za-z_][A-Za-z0-9_]*. The program (exec[0], release[0]) is
// never substituted. Unlike systemd, which makes an unknown name empty,
// a reference to a name the process's environment does not have is an
// error (CheckArgs at plan time, ExpandArg at each start), and so is what
// reads as a reference gone wrong: a ${ without NAME}, a whole argument
// that starts with $NAME and goes on ($STATE_DIRECTORY/db: write
// ${STATE_DIRECTORY}/db).

// argPart is a piece of a parsed argument: text, or a reference to name.
type argPart struct {
	text, name string
}

// parseArg splits arg into its text and references, by the rule above.
// Its error says what is wrong, in the words of the argument.
func parseArg(arg string) ([]argPart, error) {
	var parts []argPart
	var text strings.Builder
	flush := func() {
		if text.Len() > 0 {
			parts = append(parts, argPart{text: text.String()})
			text.Reset()
		}
	}
	if len(arg) > 1 && arg[0] == '$' && isNameStart(arg[1]) {
		n := 1 + nameLen(arg[1:])
		if n != len(arg) {
			return nil, fmt.Errorf("%q starts with $%s and goes on: write ${%s}%s, or $$ for a literal $", arg, arg[1:n], arg[1:n], arg[n:])
		}
		return []argPart{{name: arg[1:]}}, nil
	}
	for i := 0; i < len(arg); i++ {
		c := arg[i]
		if c != '$' || i+1 == len(arg) {
			text.WriteByte(c)
			continue
		}
		switch arg[i+1] {
		case '$':
			text.WriteByte('$')
			i++
		case '{':
			n := nameLen(arg[i+2:])
			end := i + 2 + n
			if n == 0 || end >= len(arg) || arg[end] != '}' {
				return nil, fmt.Errorf("%q: ${ must be followed by a name and } (${NAME}, NAME of letters, digits and _); write $${ for a literal ${", arg)
			}
			flush()
			parts = append(parts, argPart{name: arg[i+2 : end]})
			i = end
		default:
			text.WriteByte(c)
		}
	}
	flush()
	return parts, nil
}

// nameLen is the length of the variable name s starts with; 0 if none.
func nameLen(s string) int {
	if s == "" || !isNameStart(s[0]) {
		return 0
	}
	n := 1
	for n < len(s) && (isNameStart(s[n]) || s[n] >= '0' && s[n] <= '9') {
		n++
	}
	return n
}

func isNameStart(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// ArgRefs returns the names arg refers to, in order, or why it cannot be
// read.
func ArgRefs(arg string) ([]string, error) {
	parts, err := parseArg(arg)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, p := range parts {
		if p.name != "" {
			names = append(names, p.name)
		}
	}
	return names, nil
}

// ExpandArg returns arg with its references replaced by their values in
// env (NAME=value strings, as a process gets them): what a process's
// argument is, at each start. A name env does not have is an error, and
// so is one never put in arguments (DATABASE_URL).
func ExpandArg(arg string, env []string) (string, error) {
	if !strings.Contains(arg, "$") {
		return arg, nil
	}
	parts, err := parseArg(arg)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, p := range parts {
		if p.name == "" {
			b.WriteString(p.text)
			continue
		}
		if why, ok := argNeverSubstituted[p.name]; ok {
			return "", fmt.Errorf("$%s is never put in a program's arguments: %s", p.name, why)
		}
		v, ok := lookupEnv(env, p.name)
		if !ok {
			return "", fmt.Errorf("$%s is not in the environment (write $$ for a literal $)", p.name)
		}
		b.WriteString(v)
	}
	return b.String(), nil
}

// lookupEnv finds name in env's NAME=value strings; the last one wins,
// as in a process's own getenv over a list built that way.
func lookupEnv(env []string, name string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == name {
			return v, true
		}
	}
	return "", false
}

// EscapeArg writes s so that ExpandArg gives it back as it is: every $
// doubled.
func EscapeArg(s string) string { return strings.ReplaceAll(s, "$", "$$") }

// argNeverSubstituted are variables of a process's environment that no
// argument may refer to: a process's arguments are readable by every user
// of the machine (ps, /proc/PID/cmdline), and DATABASE_URL may hold the
// database's password. (Secrets are files, never in the environment.)
var argNeverSubstituted = map[string]string{
	"DATABASE_URL": "it may hold the database's password, and a process's arguments are readable by every user of the machine: let the program read it from its environment",
}

// argEnv returns the variables every process of field ("exec" or
// "release") of service svc has, by name: what its arguments may refer
// to. Those of the database are its fixed ones (PGPORT and PGSSL* are
// set only for some servers).
func (s *Spec) argEnv(svc *Service, field string) map[string]bool {
	names := map[string]bool{
		"PATH": true, "HOME": true, "STATE_DIRECTORY": true, "RUNTIME_DIRECTORY": true,
		"HOSTEL_SERVICE": true, "HOSTEL_VERSION": true,
	}
	if field == "exec" {
		// A release serves nothing: it gets no PORT, HOST or NOTIFY_SOCKET.
		names["PORT"], names["HOST"], names["NOTIFY_SOCKET"] = true, true, true
	}
	if len(svc.Secrets) > 0 {
		names["CREDENTIALS_DIRECTORY"] = true
	}
	if svc.Postgres != nil {
		for _, k := range []string{"DATABASE_URL", "PGHOST", "PGDATABASE", "PGUSER"} {
			names[k] = true
		}
	}
	for _, n := range svc.Needs {
		names[EnvName(n)] = true
	}
	for k := range svc.Env {
		names[k] = true
	}
	return names
}

// checkArgRefs says what is wrong with the variables in the arguments of
// field of svc, and in which element, or "".
func (s *Spec) checkArgRefs(svc *Service, field string, argv []string) (string, string) {
	if len(argv) == 0 {
		return "", ""
	}
	if strings.Contains(argv[0], "$") {
		// What would be substituted in another argument is refused here,
		// not passed as written: it cannot mean what it says.
		if refs, err := ArgRefs(argv[0]); err != nil || len(refs) > 0 || strings.Contains(argv[0], "$$") {
			return fieldIndex(field, 0), fmt.Sprintf("%q: the program is never substituted (write its path as it is)", argv[0])
		}
	}
	var env map[string]bool
	for i, a := range argv[1:] {
		if !strings.Contains(a, "$") {
			continue
		}
		refs, err := ArgRefs(a)
		if err != nil {
			return fieldIndex(field, i+1), err.Error()
		}
		if env == nil && len(refs) > 0 {
			env = s.argEnv(svc, field)
		}
		for _, name := range refs {
			if why, ok := argNeverSubstituted[name]; ok && env[name] {
				return fieldIndex(field, i+1), fmt.Sprintf("$%s is never put in a program's arguments: %s", name, why)
			}
			if !env[name] {
				where := "the service's environment"
				if field == "release" && (name == "PORT" || name == "HOST" || name == "NOTIFY_SOCKET") {
					where = "a release's environment (a release serves nothing)"
				}
				return fieldIndex(field, i+1), fmt.Sprintf("$%s is not in %s (write $$ for a literal $)", name, where)
			}
		}
	}
	return "", ""
}
