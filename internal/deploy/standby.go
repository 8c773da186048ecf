package deploy

import (
	"context"
	"errors"

	"hostel/internal/spec"
	"hostel/internal/store"
)

// ErrStandby is why an engine that does not lead refuses to change
// anything: another daemon sharing the store leads the engine, and every
// change goes through it.
var ErrStandby = errors.New("this daemon does not lead the deployment's engine (another daemon sharing the store does): change it through that daemon")

// Standby makes the engine a standby: it writes nothing — every
// operation fails with ErrStandby — until SetWriter gives it the store
// fenced on a leadership it won.
func (e *Engine) Standby() { e.SetWriter(standby{e.st}) }

// Leads reports whether the engine may write: it is not a standby.
func (e *Engine) Leads() bool {
	_, waiting := e.writer().(standby)
	return !waiting
}

// lead returns ErrStandby while the engine is a standby.
func (e *Engine) lead() error {
	if !e.Leads() {
		return ErrStandby
	}
	return nil
}

// standby is a store whose every write fails with ErrStandby; reads go
// through.
type standby struct{ store.Store }

func (standby) Commit(context.Context, *spec.Generation, uint64, ...store.Write) (uint64, error) {
	return 0, ErrStandby
}
func (standby) SetCurrent(context.Context, uint64, uint64, ...store.Write) error { return ErrStandby }
func (standby) SetConfirm(context.Context, uint64, *spec.Confirm, uint64, uint64, ...store.Write) error {
	return ErrStandby
}
func (standby) Delete(context.Context, ...uint64) error                       { return ErrStandby }
func (standby) DropEnv(context.Context, string, uint64, ...store.Write) error { return ErrStandby }
func (standby) PutRecord(context.Context, string, string, []byte, uint64) (uint64, error) {
	return 0, ErrStandby
}
func (standby) DeleteRecord(context.Context, string, string, uint64) error { return ErrStandby }
func (standby) Txn(context.Context, ...store.Write) (uint64, error)        { return 0, ErrStandby }
