package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"hostel/internal/keyring"
	"hostel/internal/spec"
	"hostel/internal/store"
)

// migrateRecords moves what older daemons kept in files beside the store
// into it, once: the database records ROOT/postgres/SERVICE.json and the
// release markers ROOT/releases/SERVICE/VERSION. Each file is removed
// after its record is in the store, so a crash in between leaves a file
// whose record exists — the next start finds it and only removes it.
func migrateRecords(ctx context.Context, root string, st store.Store) error {
	dbFiles, err := filepath.Glob(filepath.Join(root, "postgres", "*.json"))
	if err != nil {
		return err
	}
	for _, f := range dbFiles {
		service := strings.TrimSuffix(filepath.Base(f), ".json")
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := migrateFile(ctx, st, f, store.KindDatabase, service, bytes.TrimSpace(data)); err != nil {
			return err
		}
	}
	releases := filepath.Join(root, "releases")
	services, err := os.ReadDir(releases)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	for _, sd := range services {
		dir := filepath.Join(releases, sd.Name())
		versions, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, v := range versions {
			f := filepath.Join(dir, v.Name())
			if strings.HasPrefix(v.Name(), ".") || !v.Type().IsRegular() {
				os.Remove(f) // an atomic write's leftover temp file
				continue
			}
			data, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			// The marker was the time (RFC 3339), a newline, the output.
			first, out, _ := bytes.Cut(data, []byte("\n"))
			t, err := time.Parse(time.RFC3339, string(first))
			if err != nil {
				t = time.Unix(0, 0)
			}
			key := releaseKey(sd.Name(), spec.Version(v.Name()))
			if err := migrateFile(ctx, st, f, store.KindRelease, key, newReleaseRecord(t, out)); err != nil {
				return err
			}
		}
		os.Remove(dir) // only if empty
	}
	os.Remove(releases)
	return nil
}

// migratePasswords moves the role passwords older daemons kept in
// ROOT/postgres/NAME.password into the store, sealed to the machine keys
// (keys), and removes the files, then the directory when nothing else is
// in it. A password the store already holds (a move cut short, another
// daemon's) is kept: provisioning sets the role's password to it.
func migratePasswords(ctx context.Context, root string, st store.Store, keys *keyring.Keyring) error {
	dir := filepath.Join(root, "postgres")
	files, err := filepath.Glob(filepath.Join(dir, "*.password"))
	if err != nil {
		return err
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".password")
		pw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		v, err := keys.Seal(ctx, bytes.TrimSpace(pw))
		clear(pw)
		if err != nil {
			return fmt.Errorf("move %s into the store: %w", f, err)
		}
		if err := migrateFile(ctx, st, f, store.KindPassword, name, v); err != nil {
			return err
		}
	}
	os.Remove(dir) // only if empty
	return nil
}

// migrateFile puts value as the record kind/key, unless the store already
// holds one (a migration cut short), and then removes file.
func migrateFile(ctx context.Context, st store.Store, file, kind, key string, value []byte) error {
	_, err := st.PutRecord(ctx, kind, key, value, 0)
	if err != nil && !errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("move %s into the store: %w", file, err)
	}
	return os.Remove(file)
}
