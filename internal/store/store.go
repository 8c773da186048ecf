// Package store keeps hostel's state: the generations, crash-safe.
//
// Store is an interface so that the local transactional store (bbolt) can
// later be joined by one on etcd for cluster mode.
package store

import (
	"errors"

	"hostel/internal/spec"
)

// ErrNotFound is returned for a generation the store does not hold.
var ErrNotFound = errors.New("no such generation")

// ErrCurrent is returned when deleting the current generation.
var ErrCurrent = errors.New("the current generation cannot be deleted")

// Store holds generations. Every method is atomic: after a crash, a
// generation is either wholly there or not at all.
type Store interface {
	// Commit assigns g the next number and time, stores it and makes it current.
	Commit(g *spec.Generation) (uint64, error)
	// Current returns the current generation, or nil if none was ever committed.
	Current() (*spec.Generation, error)
	// Get returns generation n, or ErrNotFound.
	Get(n uint64) (*spec.Generation, error)
	// List returns every generation, oldest first.
	List() ([]*spec.Generation, error)
	// SetCurrent makes generation n current (rollback).
	SetCurrent(n uint64) error
	// SetConfirm records how generation n's confirm window stands and,
	// when current is not 0, makes generation current current in the same
	// transaction: a switch back is recorded whole or not at all.
	SetConfirm(n uint64, c *spec.Confirm, current uint64) error
	// Delete removes generations; it refuses the current one.
	Delete(ns ...uint64) error
	// Close releases the store.
	Close() error
}
