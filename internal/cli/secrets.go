package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"filippo.io/age"
	"github.com/spf13/cobra"

	"hostel/internal/api"
	"hostel/internal/secrets"
	"hostel/internal/source"
	"hostel/internal/spec"
)

func init() { commands = append(commands, secretsCmd) }

// secretsOpts are the flags of the secrets commands.
type secretsOpts struct {
	dir        string
	identities []string
}

func (o *secretsOpts) repo() secrets.Repo {
	return secrets.Repo{Dir: filepath.Join(o.dir, secrets.Dir)}
}

// invalid is an input error (exit 2).
func invalid(format string, args ...any) error {
	return &api.Error{Kind: api.KindInvalid, Message: fmt.Sprintf(format, args...)}
}

func secretsCmd(e *env) *cobra.Command {
	o := &secretsOpts{}
	cmd := &cobra.Command{
		Use:   "secrets",
		Short: "Age-encrypted secrets in the spec's repository (edit, rekey, list, recipients)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError{errors.New("secrets: name a subcommand: edit NAME, rekey, list or recipients")}
		},
	}
	cmd.PersistentFlags().StringVar(&o.dir, "dir", ".", "the repository: the directory of the spec file, which holds secrets/")
	cmd.PersistentFlags().StringArrayVar(&o.identities, "identity", nil,
		"an age identity file or unencrypted SSH private key to decrypt with (env HOSTEL_IDENTITY; default: ROOT/host.key when readable, ~/.ssh/id_ed25519)")
	cmd.AddCommand(secretsEditCmd(e, o), secretsRekeyCmd(e, o), secretsListCmd(e, o), secretsRecipientsCmd(e))
	return cmd
}

// identities gathers what the admin can decrypt with: --identity files,
// HOSTEL_IDENTITY, then, if readable, the machine's host key and
// ~/.ssh/id_ed25519.
func (o *secretsOpts) loadIdentities(root string) ([]age.Identity, []string, error) {
	var (
		ids   []age.Identity
		names []string
	)
	explicit := append([]string{}, o.identities...)
	if v := os.Getenv("HOSTEL_IDENTITY"); v != "" {
		explicit = append(explicit, v)
	}
	for _, p := range explicit {
		got, err := secrets.ReadIdentity(p)
		if err != nil {
			return nil, nil, invalid("%v", err)
		}
		ids = append(ids, got...)
		names = append(names, p)
	}
	fallback := []string{filepath.Join(root, secrets.HostKeyFile)}
	if home, err := os.UserHomeDir(); err == nil {
		fallback = append(fallback, filepath.Join(home, ".ssh", "id_ed25519"))
	}
	for _, p := range fallback {
		got, err := secrets.ReadIdentity(p)
		if err != nil {
			continue // absent or not readable by this user: not an identity we have
		}
		ids = append(ids, got...)
		names = append(names, p)
	}
	return ids, names, nil
}

func secretsEditCmd(e *env, o *secretsOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "edit NAME",
		Short: "Decrypt a secret into a private temp file, run $EDITOR, re-encrypt it to all recipients",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := secrets.CheckName(name); err != nil {
				return usageError{err}
			}
			repo := o.repo()
			rs, err := o.recipients(cmd.Context(), e)
			if err != nil {
				return err
			}
			ids, names, err := o.loadIdentities(e.root)
			if err != nil {
				return err
			}
			editor := os.Getenv("EDITOR")
			if editor == "" {
				editor = os.Getenv("VISUAL")
			}
			if editor == "" {
				editor = "vi"
			}
			changed, err := repo.Edit(name, ids, func(path string) error {
				// EDITOR may carry arguments ("code --wait"), as with git.
				c := exec.CommandContext(cmd.Context(), "/bin/sh", "-c", editor+` "$1"`, "sh", path)
				c.Stdin, c.Stdout, c.Stderr = os.Stdin, e.stdout, e.stderr
				if err := c.Run(); err != nil {
					return fmt.Errorf("editor %q: %v; %s was not changed", editor, err, repo.Path(name))
				}
				return nil
			})
			if err != nil {
				if errors.Is(err, secrets.ErrNotRecipient) {
					tried := "none found"
					if len(names) > 0 {
						tried = strings.Join(names, ", ")
					}
					return fmt.Errorf("%w\nidentities tried: %s\nTry: hostel secrets edit %s --identity FILE", err, tried, name)
				}
				return err
			}
			rel := filepath.Join(secrets.Dir, name+secrets.Ext)
			if !changed {
				fmt.Fprintf(e.stdout, "%s: unchanged\n", rel)
				return nil
			}
			fmt.Fprintf(e.stdout, "%s: encrypted to %d recipients\n", rel, len(rs))
			return nil
		},
	}
}

func secretsRekeyCmd(e *env, o *secretsOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "rekey",
		Short: "Re-encrypt every secret to the recipients in secrets/recipients.txt",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			repo := o.repo()
			rs, err := o.recipients(cmd.Context(), e)
			if err != nil {
				return err
			}
			ids, _, err := o.loadIdentities(e.root)
			if err != nil {
				return err
			}
			done, err := repo.Rekey(ids)
			if err != nil {
				return fmt.Errorf("rekey: nothing rewritten: %w", err)
			}
			fmt.Fprintf(e.stdout, "re-encrypted %d secrets to %d recipients\n", len(done), len(rs))
			return nil
		},
	}
}

// secretInfo is one row of `hostel secrets list --json`.
type secretInfo struct {
	Name string `json:"name"`
	// Recipients is how many recipients the file is encrypted to; 0 when missing.
	Recipients int      `json:"recipients"`
	Missing    bool     `json:"missing,omitempty"`
	Stale      bool     `json:"stale,omitempty"`
	UsedBy     []string `json:"used_by"`
}

type recipientInfo struct {
	Key     string `json:"key"`
	Comment string `json:"comment,omitempty"`
}

func secretsListCmd(e *env, o *secretsOpts) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Show the secrets, their recipients, and which services use each",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			repo := o.repo()
			var out struct {
				Recipients []recipientInfo `json:"recipients"`
				Secrets    []secretInfo    `json:"secrets"`
			}
			out.Recipients, out.Secrets = []recipientInfo{}, []secretInfo{}
			rs, rerr := repo.Recipients()
			for _, r := range rs {
				out.Recipients = append(out.Recipients, recipientInfo{Key: r.Key, Comment: r.Comment})
			}
			usedBy, err := secretUsers(o.dir)
			if err != nil {
				return err
			}
			names, err := repo.Names()
			if err != nil {
				return err
			}
			all := map[string]bool{}
			for _, n := range names {
				all[n] = true
			}
			for n := range usedBy {
				all[n] = true
			}
			sorted := make([]string, 0, len(all))
			for n := range all {
				sorted = append(sorted, n)
			}
			sort.Strings(sorted)
			for _, n := range sorted {
				info := secretInfo{Name: n, UsedBy: append([]string{}, usedBy[n]...)}
				ct, err := repo.Read(n)
				if errors.Is(err, fs.ErrNotExist) {
					info.Missing = true
				} else if err != nil {
					return err
				} else {
					st, err := secrets.Stanzas(ct)
					if err != nil {
						return fmt.Errorf("%s: %w", repo.Path(n), err)
					}
					for _, c := range st {
						info.Recipients += c
					}
					info.Stale = rerr == nil && info.Recipients != len(rs)
				}
				out.Secrets = append(out.Secrets, info)
			}
			if asJSON {
				return printJSON(e.stdout, &out)
			}
			fmt.Fprintf(e.stdout, "recipients (%s):\n", filepath.Join(secrets.Dir, secrets.RecipientsFile))
			if rerr != nil {
				fmt.Fprintf(e.stdout, "  none: %v\n", rerr)
			}
			for _, r := range out.Recipients {
				c := ""
				if r.Comment != "" {
					c = "  # " + r.Comment
				}
				fmt.Fprintf(e.stdout, "  %s%s\n", r.Key, c)
			}
			fmt.Fprintln(e.stdout)
			tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "SECRET\tRECIPIENTS\tUSED BY")
			for _, s := range out.Secrets {
				rec := fmt.Sprint(s.Recipients)
				switch {
				case s.Missing:
					rec = "missing (hostel secrets edit " + s.Name + ")"
				case s.Stale:
					rec += fmt.Sprintf(" of %d listed (run: hostel secrets rekey)", len(rs))
				}
				users := strings.Join(s.UsedBy, ", ")
				if users == "" {
					users = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, rec, users)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the list as JSON")
	return cmd
}

// secretUsers maps each secret to the services of the spec in dir that list
// it. Without a spec file it is empty.
func secretUsers(dir string) (map[string][]string, error) {
	out := map[string][]string{}
	file, err := source.Find(dir)
	if err != nil {
		return out, nil
	}
	path := filepath.Join(dir, file)
	var s *spec.Spec
	if strings.HasSuffix(file, ".json") {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		abs, _ := filepath.Abs(dir)
		if s, err = spec.DecodeIn(path, data, abs); err != nil {
			return nil, err
		}
	} else {
		l, err := source.Load(path)
		if err != nil {
			return nil, err
		}
		s = l.Spec
	}
	for _, name := range s.Names() {
		for _, sec := range s.Services[name].Secrets {
			out[sec] = append(out[sec], name)
		}
	}
	return out, nil
}

func secretsRecipientsCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "recipients",
		Short: "Print this machine's public key (in a cluster, every node's), for secrets/recipients.txt",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			r, err := c.SecretsRecipient(cmd.Context())
			if err != nil {
				return err
			}
			if r.Nodes == nil {
				fmt.Fprintln(e.stdout, r.PublicKey)
				return nil
			}
			for _, n := range r.Nodes {
				fmt.Fprintln(e.stdout, recipientLine(n))
			}
			return nil
		},
	}
}

// recipientLine is a node's key as a line of secrets/recipients.txt, its
// comment naming the node.
func recipientLine(n api.NodeKey) string {
	line := n.PublicKey + "  # " + nodeOf(n)
	if n.Self {
		line += " (this machine)"
	}
	return line
}

// nodeOf names the machine of a key.
func nodeOf(n api.NodeKey) string {
	if n.Node == "" {
		return "host " + n.Host
	}
	return "node " + n.Node
}

// recipients is what edit and rekey encrypt to: the keys in
// secrets/recipients.txt, and nothing else, wherever they run. When a
// daemon of a cluster answers, a node whose key is not among them is
// named on stderr: that node cannot decrypt the secrets of the services
// placed on it, and a deploy that places one there fails.
func (o *secretsOpts) recipients(ctx context.Context, e *env) ([]secrets.Recipient, error) {
	repo := o.repo()
	rs, err := repo.Recipients()
	if err != nil {
		return nil, invalid("%v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := e.client()
	if err != nil {
		return nil, err
	}
	r, err := c.SecretsRecipient(ctx)
	if err != nil {
		return rs, nil // no daemon here (an admin's machine): nothing to compare with
	}
	listed := map[string]bool{}
	for _, rec := range rs {
		listed[rec.Key] = true
	}
	for _, n := range r.Nodes {
		if !listed[n.PublicKey] {
			fmt.Fprintf(e.stderr, "warning: the key of %s is not in %s: it cannot decrypt the secrets of the services placed on it\nTry: add this line, then run hostel secrets rekey: %s\n",
				nodeOf(n), repo.RecipientsPath(), recipientLine(n))
		}
	}
	return rs, nil
}
