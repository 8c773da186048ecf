package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	"hostel/internal/store"
	"hostel/internal/store/etcd"
)

// StoreOptions choose where the daemon keeps its state. The zero value is
// the bbolt file ROOT/state.db.
type StoreOptions struct {
	// Etcd are the URLs of the etcd that holds the state (serve --etcd).
	Etcd []string
	// EtcdCert and EtcdKey are a client certificate and its key, and
	// EtcdCA the CA of the members' certificates, for https:// URLs — as
	// etcdctl's --cert, --key and --cacert. With https:// EtcdPeers they
	// are the member's own: it serves its peers and clients with them,
	// and the daemon's client presents them (etcd.Cluster).
	EtcdCert, EtcdKey, EtcdCA string
	// EtcdEmbed runs an etcd member in the daemon, its data under
	// ROOT/etcd (serve --etcd-embed): alone, reached on a unix socket
	// there; or, with EtcdPeers, one of a cluster's.
	EtcdEmbed bool
	// EtcdPeers are the initial members of the cluster the member of
	// EtcdEmbed is one of, NAME=PEER_URL each (serve --etcd-peers,
	// etcd.ParsePeers); the node's name is its member's. Nil: the member
	// is alone.
	EtcdPeers []string
}

// etcd reports whether the state is in etcd.
func (o StoreOptions) etcd() bool { return o.EtcdEmbed || len(o.Etcd) > 0 }

// Validate checks the options of the daemon of node (its --node, ""
// for the default), before anything starts; an error names the flag. Of
// a cluster's member (EtcdPeers) it checks what etcd.Cluster.Check
// does: the node is a member, and its certificate is one its peers
// will take.
func (o StoreOptions) Validate(node string) error {
	tlsFlags := map[string]string{"--etcd-cert": o.EtcdCert, "--etcd-key": o.EtcdKey, "--etcd-ca": o.EtcdCA}
	switch {
	case o.EtcdEmbed && len(o.Etcd) > 0:
		return errors.New("--etcd and --etcd-embed: choose one, an etcd to use or a member in the daemon")
	case len(o.EtcdPeers) > 0 && !o.EtcdEmbed:
		return errors.New("--etcd-peers needs --etcd-embed: they are the initial members of the cluster the daemon's own member is one of")
	case o.EtcdCert != "" && o.EtcdKey == "":
		return errors.New("--etcd-cert needs --etcd-key")
	case o.EtcdKey != "" && o.EtcdCert == "":
		return errors.New("--etcd-key needs --etcd-cert")
	}
	if len(o.EtcdPeers) > 0 {
		_, err := o.cluster(node)
		return err
	}
	for _, flag := range []string{"--etcd-cert", "--etcd-key", "--etcd-ca"} {
		if tlsFlags[flag] != "" && len(o.Etcd) == 0 {
			return fmt.Errorf("%s is for the TLS of --etcd URLS, or of https:// --etcd-peers", flag)
		}
	}
	usesTLS := o.EtcdCert != "" || o.EtcdCA != ""
	for _, raw := range o.Etcd {
		u, err := url.Parse(raw)
		switch {
		case err != nil:
			return fmt.Errorf("--etcd %q: %w", raw, err)
		case (u.Scheme == "http" || u.Scheme == "https") && u.Host != "":
		case u.Scheme == "unix" && u.Host+u.Path != "":
		default:
			return fmt.Errorf("--etcd %q: want http://HOST:PORT, https://HOST:PORT or unix://PATH", raw)
		}
		if usesTLS && u.Scheme != "https" {
			return fmt.Errorf("--etcd %q: --etcd-cert and --etcd-ca are for https:// URLs", raw)
		}
	}
	return nil
}

// cluster is the cluster of EtcdPeers whose member node is, checked
// (etcd.Cluster.Check); node "" is the default node name.
func (o StoreOptions) cluster(node string) (etcd.Cluster, error) {
	peers, err := etcd.ParsePeers(o.EtcdPeers)
	if err != nil {
		return etcd.Cluster{}, fmt.Errorf("--etcd-peers: %w", err)
	}
	if node == "" {
		node = nodeName()
	}
	c := etcd.Cluster{Name: node, Peers: peers, CertFile: o.EtcdCert, KeyFile: o.EtcdKey, CAFile: o.EtcdCA}
	if err := c.Check(); err != nil {
		return etcd.Cluster{}, fmt.Errorf("--etcd-peers, as node %s: %w", node, err)
	}
	return c, nil
}

// movedSuffix is added to ROOT/state.db once its content moved to etcd.
const movedSuffix = ".moved-to-etcd"

// openStore opens the store the options choose, starting the etcd
// member of --etcd-embed first. On etcd, a bbolt store left in
// ROOT/state.db moves there first (moveBolt).
func (d *Daemon) openStore(ctx context.Context) (store.Store, error) {
	o := d.opts.Store
	if err := o.Validate(d.opts.Node); err != nil {
		return nil, err
	}
	boltPath := filepath.Join(d.opts.Root, "state.db")
	if !o.etcd() {
		if _, err := os.Stat(boltPath); errors.Is(err, fs.ErrNotExist) {
			if _, err := os.Stat(boltPath + movedSuffix); err == nil {
				return nil, fmt.Errorf("%s moved to etcd (%s is what it was): start with --etcd-embed, or the --etcd it moved to; or rename it back to state.db to go on with bbolt", boltPath, boltPath+movedSuffix)
			}
		}
		return store.OpenBolt(boltPath)
	}
	endpoints := o.Etcd
	var tc *tls.Config
	if o.EtcdEmbed {
		dir := filepath.Join(d.opts.Root, "etcd")
		var m *etcd.Member
		var err error
		if len(o.EtcdPeers) > 0 {
			var c etcd.Cluster
			if c, err = o.cluster(d.opts.Node); err == nil {
				m, err = etcd.StartClusterMember(ctx, dir, c, d.logf)
			}
		} else {
			m, err = etcd.StartMember(dir, d.logf)
		}
		if err != nil {
			return nil, fmt.Errorf("--etcd-embed: %w", err)
		}
		// The client talks to the daemon's own member alone
		// (etcd.Member.Endpoints).
		d.member, endpoints, tc = m, m.Endpoints(), m.TLS()
	} else if o.EtcdCert != "" || o.EtcdCA != "" {
		var err error
		if tc, err = etcd.TLSConfig(o.EtcdCert, o.EtcdKey, o.EtcdCA); err != nil {
			return nil, fmt.Errorf("--etcd-cert, --etcd-key, --etcd-ca: %w", err)
		}
	}
	st, err := etcd.Open(ctx, etcd.Config{Endpoints: endpoints, TLS: tc})
	if err != nil {
		return nil, err
	}
	if err := moveBolt(ctx, boltPath, st, d.logf); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// moveBolt moves the generations, records and secret ciphertexts of the
// bbolt store at path into st, exactly (etcd.Store.Load), and then
// renames the file (path+movedSuffix): a daemon started on etcd the first
// time takes its machine's history with it. An etcd that already holds a
// deployment is not overwritten: the daemon refuses to start, unless it
// holds this very file's content (a start that died before the rename).
func moveBolt(ctx context.Context, path string, st *etcd.Store, logf func(string, ...any)) error {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	deployed, err := st.Deployed(ctx)
	if err != nil {
		return err
	}
	if deployed {
		m, err := st.Migrated(ctx)
		if err != nil {
			return err
		}
		if m == nil || m.Source != path {
			return fmt.Errorf("%s holds this machine's state, but etcd already holds a deployment: move %s away to use etcd's, or start without --etcd to go on with it", path, path)
		}
	} else {
		b, err := store.OpenBolt(path)
		if err != nil {
			return err
		}
		dump, err := b.Dump(ctx)
		b.Close()
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if err := st.Load(ctx, dump, path); err != nil {
			return fmt.Errorf("move %s to etcd: %w", path, err)
		}
		logf("moved %d generations, %d records and %d secret ciphertexts from %s to etcd", len(dump.Generations), len(dump.Records), len(dump.Secrets), path)
	}
	if err := os.Rename(path, path+movedSuffix); err != nil {
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync() // the rename, durable
}
