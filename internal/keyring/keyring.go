// Package keyring seals what a deployment keeps in its store that only
// its machines may read — database role passwords, the private keys of
// certificates — to the age key of every machine of the deployment, and
// opens it with this machine's key (secrets.HostKey, the key `hostel
// secrets recipients` prints).
//
// A machine joins by putting its public key in the store (a record
// machine-key PUBLIC-KEY). A value is sealed to every key joined at that
// moment. What was sealed before a machine joined reaches it when a
// machine that can open it seals it again (Reseal): each daemon does at
// its start, and whenever it sees a machine join (Follow). Whoever can
// write to the store is trusted with what the store holds: it could as
// well deploy a service that reads a database.
//
// The plaintext is never stored, logged or put in an error.
package keyring

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"hostel/internal/secrets"
	"hostel/internal/store"
)

// Keyring seals values to the deployment's machines and opens them with
// this machine's key. Its methods are safe for concurrent use.
type Keyring struct {
	st  store.Store
	key *secrets.HostKey
}

// New returns the keyring of this machine (key) in the deployment whose
// state st holds. Call Join before sealing: a machine that has not joined
// seals to itself too, but no one reseals to it.
func New(st store.Store, key *secrets.HostKey) *Keyring {
	return &Keyring{st: st, key: key}
}

// PublicKey is this machine's public key.
func (k *Keyring) PublicKey() string { return k.key.PublicKey() }

// member is the value of a machine-key record.
type member struct {
	Joined time.Time `json:"joined"`
	// Host is the machine's host name when it joined, for people.
	Host string `json:"host,omitempty"`
	// Node is the name of the machine's node (hostel serve --node) when
	// it last joined; "" for a machine that joined before nodes had
	// names here.
	Node string `json:"node,omitempty"`
}

// Join adds this machine's key to the deployment's, if it is not there.
func (k *Keyring) Join(ctx context.Context) error { return k.JoinNode(ctx, "") }

// JoinNode adds this machine's key to the deployment's, if it is not
// there, as the key of node (its name, for `hostel secrets recipients`);
// a key joined before under another node name, or none, takes this one.
func (k *Keyring) JoinNode(ctx context.Context, node string) error {
	host, _ := os.Hostname()
	m := member{Joined: time.Now().UTC(), Host: host, Node: node}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_, err = k.st.PutRecord(ctx, store.KindMachineKey, k.PublicKey(), b, 0)
	if errors.Is(err, store.ErrConflict) && node != "" {
		err = k.rename(ctx, m)
	}
	if err != nil && !errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("machine key: %w", err)
	}
	return nil
}

// rename gives this machine's record m's node and host, keeping when it
// joined first.
func (k *Keyring) rename(ctx context.Context, m member) error {
	r, err := k.st.Record(ctx, store.KindMachineKey, k.PublicKey())
	if err != nil {
		return err
	}
	var old member
	if json.Unmarshal(r.Value, &old) == nil {
		if old.Node == m.Node && old.Host == m.Host {
			return nil
		}
		if !old.Joined.IsZero() {
			m.Joined = old.Joined
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_, err = k.st.PutRecord(ctx, store.KindMachineKey, k.PublicKey(), b, r.Revision)
	return err
}

// Member is one machine of the deployment, as its key's record says.
type Member struct {
	// Key is its age public key.
	Key string
	// Node is its node's name; "" for a machine that has not joined
	// since nodes had names here.
	Node string
	// Host is its host name when it joined.
	Host string
	// Joined is when its key was first added.
	Joined time.Time
	// Self is set for this machine.
	Self bool
}

// Members returns every machine of the deployment — every key a value is
// sealed to — sorted by node name, then key.
func (k *Keyring) Members(ctx context.Context) ([]Member, error) {
	recs, err := k.st.Records(ctx, store.KindMachineKey)
	if err != nil {
		return nil, fmt.Errorf("machine keys: %w", err)
	}
	out := make([]Member, 0, len(recs))
	for _, r := range recs {
		var m member
		json.Unmarshal(r.Value, &m) // a value it cannot read still names a key
		out = append(out, Member{Key: r.Key, Node: m.Node, Host: m.Host, Joined: m.Joined, Self: r.Key == k.PublicKey()})
	}
	slices.SortFunc(out, func(a, b Member) int {
		if c := strings.Compare(a.Node, b.Node); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	return out, nil
}

// sealed is a sealed value as the store keeps it.
type sealed struct {
	// To are the public keys it is sealed to, sorted.
	To []string `json:"to"`
	// At is when the plaintext was sealed first; sealing it again to more
	// keys keeps it.
	At time.Time `json:"at"`
	// Age is the ciphertext, in age's binary format.
	Age []byte `json:"age"`
}

// keys returns the public keys of the deployment's machines, sorted, this
// machine's among them.
func (k *Keyring) keys(ctx context.Context) ([]string, error) {
	recs, err := k.st.Records(ctx, store.KindMachineKey)
	if err != nil {
		return nil, fmt.Errorf("machine keys: %w", err)
	}
	out := []string{k.PublicKey()}
	for _, r := range recs {
		out = append(out, r.Key)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Seal seals plaintext to every machine of the deployment and returns the
// value to store.
func (k *Keyring) Seal(ctx context.Context, plaintext []byte) ([]byte, error) {
	keys, err := k.keys(ctx)
	if err != nil {
		return nil, err
	}
	return seal(plaintext, time.Now().UTC(), keys)
}

func seal(plaintext []byte, at time.Time, keys []string) ([]byte, error) {
	rs, err := secrets.ParseRecipients(store.KindMachineKey, strings.NewReader(strings.Join(keys, "\n")))
	if err != nil {
		return nil, err
	}
	ct, err := secrets.Encrypt(plaintext, rs)
	if err != nil {
		return nil, err
	}
	return json.Marshal(sealed{To: keys, At: at, Age: ct})
}

func decode(value []byte) (*sealed, error) {
	var s sealed
	if err := json.Unmarshal(value, &s); err != nil || len(s.Age) == 0 {
		return nil, errors.New("not a sealed value")
	}
	return &s, nil
}

// Open returns the plaintext of a sealed value. An error wraps
// secrets.ErrNotRecipient when the value is not sealed to this machine:
// it is until a machine that can open it reseals it.
func (k *Keyring) Open(value []byte) ([]byte, error) {
	s, err := decode(value)
	if err != nil {
		return nil, err
	}
	pt, err := secrets.Decrypt(s.Age, k.key)
	if errors.Is(err, secrets.ErrNotRecipient) {
		return nil, fmt.Errorf("sealed to %s, not to this machine's key %s (a daemon of a machine it is sealed to seals it to this one too when it starts or sees this one join): %w",
			strings.Join(s.To, ", "), k.PublicKey(), err)
	}
	return pt, err
}

// ResealWait is how long Load waits for a value sealed before this machine
// joined to be sealed to it too: a daemon that can open it does that as
// soon as it sees the machine join (Follow).
const ResealWait = 10 * time.Second

// Load reads the sealed record kind/key and opens it. A value not sealed
// to this machine yet is waited for, up to ResealWait; store.ErrNotFound
// passes through.
func (k *Keyring) Load(ctx context.Context, kind, key string) ([]byte, error) {
	r, err := k.st.Record(ctx, kind, key)
	if err != nil {
		return nil, err
	}
	pt, err := k.Open(r.Value)
	if !errors.Is(err, secrets.ErrNotRecipient) {
		return pt, err
	}
	wctx, cancel := context.WithTimeout(ctx, ResealWait)
	defer cancel()
	events, werr := k.st.Watch(wctx, r.Revision)
	if werr != nil {
		return nil, err
	}
	for ev := range events {
		if ev.Err == nil && (ev.Kind != kind || ev.Key != key) {
			continue
		}
		if r, rerr := k.st.Record(ctx, kind, key); rerr != nil {
			return nil, rerr
		} else if pt, err = k.Open(r.Value); !errors.Is(err, secrets.ErrNotRecipient) {
			return pt, err
		}
	}
	return nil, err
}

// SealedAt returns when a sealed value's plaintext was sealed first, or the
// zero time for a value that is not sealed.
func SealedAt(value []byte) time.Time {
	if s, err := decode(value); err == nil {
		return s.At
	}
	return time.Time{}
}

// Reseal seals again, to every machine of the deployment, each value of
// the records of kinds that is not sealed to all of them and that this
// machine can open; it returns how many it sealed again. A value another
// writer changes meanwhile is left to it.
func (k *Keyring) Reseal(ctx context.Context, kinds ...string) (int, error) {
	keys, err := k.keys(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, kind := range kinds {
		recs, err := k.st.Records(ctx, kind)
		if err != nil {
			return n, err
		}
		for _, r := range recs {
			s, err := decode(r.Value)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", kind, r.Key, err))
				continue
			}
			if !missing(s.To, keys) {
				continue
			}
			pt, err := secrets.Decrypt(s.Age, k.key)
			if errors.Is(err, secrets.ErrNotRecipient) {
				continue // another machine's to reseal
			} else if err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", kind, r.Key, err))
				continue
			}
			v, err := seal(pt, s.At, keys)
			clear(pt)
			if err != nil {
				return n, err
			}
			_, err = k.st.Txn(ctx, store.Write{Kind: kind, Key: r.Key, Value: v, Rev: r.Revision, Lease: r.Lease})
			switch {
			case err == nil:
				n++
			case errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound):
			default:
				return n, err
			}
		}
	}
	return n, errors.Join(errs...)
}

// missing reports whether a key of keys is not in to (both sorted).
func missing(to, keys []string) bool {
	for _, key := range keys {
		if _, ok := slices.BinarySearch(to, key); !ok {
			return true
		}
	}
	return false
}

// Follow reseals the records of kinds (Reseal) now, whenever a machine
// joins and whenever a record of one of kinds is written, until ctx ends
// or the store closes. logf gets what it resealed
// and what failed.
func (k *Keyring) Follow(ctx context.Context, logf func(string, ...any), kinds ...string) {
	reseal := func(kinds ...string) {
		if n, err := k.Reseal(ctx, kinds...); err != nil && ctx.Err() == nil {
			logf("keyring: sealing to every machine key: %v", err)
		} else if n > 0 {
			logf("keyring: sealed %d values to every machine key", n)
		}
	}
	for ctx.Err() == nil {
		events, err := k.st.Watch(ctx, 0)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, store.ErrClosed) {
				logf("keyring: watching the machine keys: %v", err)
			}
			return
		}
		// Joins before the watch began are not missed: this runs after.
		reseal(kinds...)
		for ev := range events {
			// A machine joined; or a value was written, which its writer
			// may have sealed to the machines it read before one joined
			// (and saw it join before the write): looked at again, it is
			// sealed to that machine too. Resealed values are writes of
			// their kind, which find nothing more to do.
			switch {
			case ev.Type != store.EventRecord:
			case ev.Kind == store.KindMachineKey:
				reseal(kinds...)
			case slices.Contains(kinds, ev.Kind):
				reseal(ev.Kind)
			}
		}
		// The watch ended: ctx is done, the store closed, or it fell
		// behind (compacted) and starts again.
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// LoadPair returns a deployment's one pair of a public value (a plain
// record pubKind/key, which every node reads) and its private half (a
// record privKind/key sealed to every machine), making both with create if
// there are none: written in one transaction that fails if either
// exists, so that of daemons making one at once the first wins and the
// others read it back. A private half sealed before this machine joined
// is waited for (Load) until a daemon that can open it seals it again.
// The private half is the caller's to clear.
func (k *Keyring) LoadPair(ctx context.Context, pubKind, privKind, key string, create func() (public, private []byte, err error)) (public, private []byte, err error) {
	for {
		r, err := k.st.Record(ctx, pubKind, key)
		switch {
		case err == nil:
			priv, err := k.Load(ctx, privKind, key)
			if err != nil {
				return nil, nil, fmt.Errorf("its private half: %w", err)
			}
			return r.Value, priv, nil
		case !errors.Is(err, store.ErrNotFound):
			return nil, nil, err
		}
		pub, priv, err := create()
		if err != nil {
			return nil, nil, err
		}
		sealed, err := k.Seal(ctx, priv)
		clear(priv)
		if err != nil {
			return nil, nil, fmt.Errorf("sealing its private half: %w", err)
		}
		_, err = k.st.Txn(ctx,
			store.Write{Kind: pubKind, Key: key, Value: pub},
			store.Write{Kind: privKind, Key: key, Value: sealed})
		// A machine that joined between the read of the keys and this
		// write is sealed to by the daemon's follower, which looks again
		// at every sealed value written (Follow).
		if err != nil && !errors.Is(err, store.ErrConflict) {
			return nil, nil, err
		}
		// Read back what the store kept: this one, or another daemon's.
	}
}
