package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"hostel/internal/failpoint"
	"hostel/internal/spec"
	"hostel/internal/store"
	"hostel/internal/supervisor"
)

// releaser is the deploy.Preparer that runs a new version's release
// command once per deployment, after a backup, before the version starts.
// It must come after every preparer that adds to the version's
// environment.
//
// Once is kept by two records (releaseKey): a claim, written by compare-
// and-swap and bound to the daemon's lease before the step runs, and the
// release record, written when it succeeded in the same change that
// removes the claim. Of daemons sharing the store, one claims and runs;
// the others wait for its claim to end: with the record (it ran: they skip
// it) or without (it failed, or its daemon died and its lease expired:
// they claim and run it). A step cut short by a crash therefore runs
// again, as with any migration tool: a release must be safe to run again.
// The daemon that restarts on the root of the one that died does not wait
// for the lease: the claim names that root's daemon, which was itself.
type releaser struct {
	db    *databases
	lease *ownLease
	// self names this daemon in its claims; a claim of the same owner
	// and another instance is its own, left by the previous daemon of
	// its root.
	self releaseClaim
}

func newReleaser(db *databases, lease *ownLease, owner, root string) *releaser {
	host, _ := os.Hostname()
	return &releaser{db: db, lease: lease, self: releaseClaim{Owner: owner, Host: host, Root: root,
		PID: os.Getpid(), Instance: randomHex(8)}}
}

// releaseClaim is the value of a release-claim record: who runs the step.
type releaseClaim struct {
	// Owner is the public key of the claimer's machine (keyring): the
	// same across restarts of one root, as Host and Root are.
	Owner string `json:"owner"`
	Host  string `json:"host"`
	Root  string `json:"root"`
	// PID and Instance are those of the daemon process: Instance is drawn
	// at random at each start.
	PID      int       `json:"pid"`
	Instance string    `json:"instance"`
	Since    time.Time `json:"since"`
}

// previousSelf reports whether c was claimed by the previous daemon of
// this root: the same machine key, host and root, another process. Only
// one daemon serves a root at a time (the API socket) and releases run
// after it is bound, so that daemon is dead and its claim can go at once.
func (r *releaser) previousSelf(c releaseClaim) bool {
	return c.Owner == r.self.Owner && c.Host == r.self.Host && c.Root == r.self.Root && c.Instance != r.self.Instance
}

func (c releaseClaim) String() string {
	return fmt.Sprintf("the daemon of %s on %s (pid %d) since %s", c.Root, c.Host, c.PID, c.Since.Format(time.RFC3339))
}

// releaseKey is the key of the release record of service at version v.
func releaseKey(service string, v spec.Version) string { return service + "/" + string(v) }

// releaseRecord is the value of a release record.
type releaseRecord struct {
	Time time.Time `json:"time"`
	// Output is the end of what the release printed, at most
	// releaseOutputKept bytes: store values stay small.
	Output string `json:"output,omitempty"`
}

// releaseOutputKept bounds the output a release record keeps.
const releaseOutputKept = 4 << 10

func newReleaseRecord(t time.Time, out []byte) []byte {
	if len(out) > releaseOutputKept {
		out = out[len(out)-releaseOutputKept:]
	}
	b, _ := json.Marshal(releaseRecord{Time: t.UTC(), Output: string(out)})
	return b
}

// Prepare implements deploy.Preparer.
func (r *releaser) Prepare(ctx context.Context, g *spec.Generation, service string, cfg *supervisor.Config) error {
	svc := g.Spec.Services[service]
	if len(svc.Release) == 0 {
		return nil
	}
	// A preview's own database has its own release record: production's
	// runs the release again against its own data.
	data := dataName(service, cfg.Owner)
	key := releaseKey(data, cfg.Version)
	rev, err := r.claim(ctx, key)
	if err != nil || rev == 0 {
		return err // rev 0: it ran already (a restart, a rollback, another daemon)
	}
	done := false
	defer func() {
		if !done { // a daemon that waits for the claim runs it now
			r.db.store.DeleteRecord(context.WithoutCancel(ctx), store.KindReleaseClaim, key, rev)
		}
	}()
	failpoint.Hit("release-claimed")
	if svc.Postgres != nil {
		if _, err := r.db.backup(ctx, data, string(cfg.Version)); err != nil {
			return fmt.Errorf("backup before release: %w", err)
		}
	}
	rctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	t0 := time.Now()
	out, err := r.db.sup.RunOnce(rctx, *cfg, svc.Release)
	if err != nil {
		return fmt.Errorf("release %s failed, version not started: %w\n%s", strings.Join(svc.Release, " "), err, strings.TrimRight(string(out), "\n"))
	}
	r.db.logf("%s: release %s done in %s", spec.Key(service, cfg.Version), strings.Join(svc.Release, " "), time.Since(t0).Round(time.Millisecond))
	failpoint.Hit("release-ran")
	value := newReleaseRecord(time.Now(), out)
	_, err = r.db.store.Txn(ctx, store.Write{Kind: store.KindRelease, Key: key, Value: value},
		store.Write{Kind: store.KindReleaseClaim, Key: key, Rev: rev, Delete: true})
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
		// The claim ended while the step ran: this daemon's lease was
		// lost (it stalled past claimTTL, or lost the store), and another
		// daemon may be running the step again. It ran here: say so.
		r.db.logf("release %s: the claim ended while the release ran (lease lost); another daemon may run it again", key)
		if _, err = r.db.store.PutRecord(ctx, store.KindRelease, key, value, 0); errors.Is(err, store.ErrConflict) {
			err = nil // recorded by the other: it ran there too
		}
	}
	if err != nil {
		return fmt.Errorf("release %s ran, but recording it failed: %w", key, err)
	}
	done = true
	return nil
}

// claim claims the release step key for this daemon and returns the
// claim's revision, or 0 when the step already ran. It waits while
// another daemon holds the claim.
func (r *releaser) claim(ctx context.Context, key string) (uint64, error) {
	for {
		if ran, err := r.ran(ctx, key); err != nil || ran {
			return 0, err
		}
		l, err := r.lease.get(ctx)
		if err != nil {
			return 0, fmt.Errorf("release %s: lease for its claim: %w", key, err)
		}
		c := r.self
		c.Since = time.Now().UTC()
		b, _ := json.Marshal(c)
		rev, err := r.db.store.Txn(ctx, store.Write{Kind: store.KindReleaseClaim, Key: key, Value: b, Lease: l.ID()})
		if err == nil {
			// A daemon that ran it between the check and the claim
			// recorded it and dropped its claim in one change: it shows now.
			if ran, err := r.ran(ctx, key); err != nil || ran {
				r.db.store.DeleteRecord(context.WithoutCancel(ctx), store.KindReleaseClaim, key, rev)
				return 0, err
			}
			return rev, nil
		} else if !errors.Is(err, store.ErrConflict) {
			return 0, fmt.Errorf("release %s: claim: %w", key, err)
		}
		held, err := r.db.store.Record(ctx, store.KindReleaseClaim, key)
		if errors.Is(err, store.ErrNotFound) {
			continue // ended meanwhile
		} else if err != nil {
			return 0, err
		}
		var other releaseClaim
		json.Unmarshal(held.Value, &other)
		if r.previousSelf(other) {
			r.db.logf("release %s: claimed by %s, which is gone (this daemon restarted on its root): running it again", key, other)
			if err := r.db.store.DeleteRecord(ctx, store.KindReleaseClaim, key, held.Revision); err != nil &&
				!errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrConflict) {
				return 0, err
			}
			continue
		}
		r.db.logf("release %s: waiting: claimed by %s; it runs there, or the claim ends once that daemon has been gone for its lease (%s here)", key, other, r.lease.ttl)
		t0 := time.Now()
		if err := r.waitGone(ctx, key, held.Revision); err != nil {
			return 0, fmt.Errorf("release %s: waiting for %s: %w", key, other, err)
		}
		r.db.logf("release %s: the claim of %s ended after %s", key, other, time.Since(t0).Round(time.Millisecond))
	}
}

// ran reports whether the release record of key exists.
func (r *releaser) ran(ctx context.Context, key string) (bool, error) {
	_, err := r.db.store.Record(ctx, store.KindRelease, key)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// waitGone waits until the claim of key, seen at revision rev, is
// removed: the step ran or failed, or its daemon's lease expired. A watch
// that falls behind the store's history returns too: the caller reads
// again.
func (r *releaser) waitGone(ctx context.Context, key string, rev uint64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := r.db.store.Watch(wctx, rev)
	if err != nil {
		return err
	}
	for ev := range events {
		if ev.Err != nil || ev.Kind == store.KindReleaseClaim && ev.Key == key && ev.Type == store.EventRecordDeleted {
			return nil
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return store.ErrClosed
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // crypto/rand does not fail on Linux
	return hex.EncodeToString(b)
}
