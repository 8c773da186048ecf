package keyring_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"hostel/internal/keyring"
	"hostel/internal/keyring/keyringtest"
	"hostel/internal/secrets"
	"hostel/internal/store"
	"hostel/internal/store/storetest"
	"hostel/internal/store/storetest/backends"
)

// TestSealOpen: a sealed value holds no plaintext, opens on the machine
// that sealed it and on every machine joined then, and not on one that
// joined after — until a machine that can open it seals it again.
func TestSealOpen(t *testing.T) {
	backends.Each(t, func(t *testing.T, b storetest.Backend) {
		ctx := t.Context()
		a, st := keyringtest.Machine(t, b)
		bm, _ := keyringtest.Machine(t, b)
		secret := []byte("pw-0123456789abcdef")
		v, err := a.Seal(ctx, secret)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(v, secret) {
			t.Fatalf("the sealed value holds the plaintext: %s", v)
		}
		if _, err := st.PutRecord(ctx, store.KindPassword, "api", v, 0); err != nil {
			t.Fatal(err)
		}
		for name, k := range map[string]*keyring.Keyring{"the sealer": a, "a machine joined before": bm} {
			if got, err := k.Open(v); err != nil || !bytes.Equal(got, secret) {
				t.Errorf("%s opens %q, %v", name, got, err)
			}
		}

		late, lateSt := keyringtest.Machine(t, b)
		r, _ := lateSt.Record(ctx, store.KindPassword, "api")
		if _, err := late.Open(r.Value); !errors.Is(err, secrets.ErrNotRecipient) {
			t.Fatalf("a machine that joined after the sealing opens it: %v", err)
		}
		// The late machine cannot reseal what it cannot open.
		if n, err := late.Reseal(ctx, store.KindPassword); n != 0 || err != nil {
			t.Errorf("the late machine resealed %d, %v; want 0", n, err)
		}
		if n, err := a.Reseal(ctx, store.KindPassword); n != 1 || err != nil {
			t.Fatalf("resealed %d, %v; want 1", n, err)
		}
		r2, _ := lateSt.Record(ctx, store.KindPassword, "api")
		if got, err := late.Open(r2.Value); err != nil || !bytes.Equal(got, secret) {
			t.Errorf("after the reseal the late machine opens %q, %v", got, err)
		}
		if !keyring.SealedAt(r2.Value).Equal(keyring.SealedAt(r.Value)) || keyring.SealedAt(r.Value).IsZero() {
			t.Errorf("sealed at %v, resealed at %v: want the first time kept", keyring.SealedAt(r.Value), keyring.SealedAt(r2.Value))
		}
		if n, _ := a.Reseal(ctx, store.KindPassword); n != 0 {
			t.Errorf("resealed %d again, want 0: every key has it", n)
		}
	})
}

// TestFollow: a daemon that follows the keyring seals what it can open to
// a machine as soon as it joins.
func TestFollow(t *testing.T) {
	backends.Each(t, func(t *testing.T, b storetest.Backend) {
		ctx := t.Context()
		a, st := keyringtest.Machine(t, b)
		v, err := a.Seal(ctx, []byte("key material"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.PutRecord(ctx, store.KindCertKey, "certificates/ca/host/host.key", v, 0); err != nil {
			t.Fatal(err)
		}
		fctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			a.Follow(fctx, t.Logf, store.KindPassword, store.KindCertKey)
		}()
		defer func() { cancel(); <-done }()

		late, lateSt := keyringtest.Machine(t, b)
		deadline := time.Now().Add(10 * time.Second)
		for {
			r, err := lateSt.Record(ctx, store.KindCertKey, "certificates/ca/host/host.key")
			if err != nil {
				t.Fatal(err)
			}
			if got, err := late.Open(r.Value); err == nil {
				if string(got) != "key material" {
					t.Fatalf("opened %q", got)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("the value was not sealed to the machine that joined within 10s")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// TestFollowSealedBeforeJoin: a value sealed before a machine joined
// but written after its daemon saw the join (the race between reading
// the machine keys and writing the value) is sealed to it too: the
// write itself makes the follower look again.
func TestFollowSealedBeforeJoin(t *testing.T) {
	backends.Each(t, func(t *testing.T, b storetest.Backend) {
		ctx := t.Context()
		a, st := keyringtest.Machine(t, b)
		fctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			a.Follow(fctx, t.Logf, store.KindPassword)
		}()
		defer func() { cancel(); <-done }()
		// Sealed to the machines there are now; a marker tells when the
		// follower has seen the late machine join.
		v, err := a.Seal(ctx, []byte("pw-late"))
		if err != nil {
			t.Fatal(err)
		}
		marker, err := a.Seal(ctx, []byte("marker"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.PutRecord(ctx, store.KindPassword, "marker", marker, 0); err != nil {
			t.Fatal(err)
		}
		late, lateSt := keyringtest.Machine(t, b)
		if _, err := late.Load(ctx, store.KindPassword, "marker"); err != nil {
			t.Fatalf("the marker was not sealed to the machine that joined: %v", err)
		}
		if _, err := st.PutRecord(ctx, store.KindPassword, "api", v, 0); err != nil {
			t.Fatal(err)
		}
		got, err := late.Load(ctx, store.KindPassword, "api")
		if err != nil || string(got) != "pw-late" {
			t.Fatalf("the late machine loads %q, %v; want the value sealed to it after its write", got, err)
		}
		_ = lateSt
	})
}

// TestMembers: every machine that joined is a member under its node's
// name, this one marked; a machine that joined before it had a node name
// (or under another) takes the name it joins with now, and keeps when it
// joined first.
func TestMembers(t *testing.T) {
	backends.Each(t, func(t *testing.T, b storetest.Backend) {
		ctx := t.Context()
		a, _ := keyringtest.Machine(t, b) // joined without a node name
		first, err := a.Members(ctx)
		if err != nil || len(first) != 1 || first[0].Node != "" {
			t.Fatalf("members %+v, %v; want one without a node", first, err)
		}
		hk, err := secrets.EnsureHostKey(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		bk := keyring.New(b.Open(t), hk)
		for _, k := range []struct {
			k    *keyring.Keyring
			node string
		}{{a, "web2"}, {bk, "web1"}, {bk, "web1"}} {
			if err := k.k.JoinNode(ctx, k.node); err != nil {
				t.Fatal(err)
			}
		}
		got, err := a.Members(ctx)
		if err != nil {
			t.Fatal(err)
		}
		type row struct {
			key, node string
			self      bool
		}
		var rows []row
		for _, m := range got {
			rows = append(rows, row{m.Key, m.Node, m.Self})
		}
		want := []row{{bk.PublicKey(), "web1", false}, {a.PublicKey(), "web2", true}}
		if len(rows) != len(want) || rows[0] != want[0] || rows[1] != want[1] {
			t.Errorf("members %+v, want %+v", rows, want)
		}
		if !got[1].Joined.Equal(first[0].Joined) {
			t.Errorf("joined %v after the rename, want %v kept", got[1].Joined, first[0].Joined)
		}
	})
}
