package store_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"hostel/internal/store"
)

func TestPending(t *testing.T) {
	lost := &store.CompactedError{From: 1, Compacted: 3}
	ev := func(rev uint64, last bool) store.Event { return store.Event{Revision: rev, Last: last} }
	tests := []struct {
		name   string
		events []store.Event
		later  []store.Event // sent once Pending waits
		close  bool
		want   []uint64 // the batch's revisions
		err    error
	}{
		{name: "one", events: []store.Event{ev(1, true)}, want: []uint64{1}},
		{name: "all there", events: []store.Event{ev(1, true), ev(2, false), ev(2, true)}, want: []uint64{1, 2, 2}},
		{name: "the rest of a change", events: []store.Event{ev(1, true), ev(2, false)}, later: []store.Event{ev(2, true)}, want: []uint64{1, 2, 2}},
		{name: "ended", close: true, err: store.ErrWatchEnded},
		{name: "ended behind events", events: []store.Event{ev(1, true)}, close: true, err: store.ErrWatchEnded},
		{name: "ended within a change", events: []store.Event{ev(1, false)}, close: true, err: store.ErrWatchEnded},
		{name: "lost", events: []store.Event{ev(1, true), {Err: lost}}, err: lost},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			events := make(chan store.Event, len(tt.events)+len(tt.later))
			for _, ev := range tt.events {
				events <- ev
			}
			if tt.close {
				close(events)
			}
			if tt.later != nil {
				go func() {
					time.Sleep(50 * time.Millisecond)
					for _, ev := range tt.later {
						events <- ev
					}
				}()
			}
			batch, err := store.Pending(events)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			var got []uint64
			for _, ev := range batch {
				got = append(got, ev.Revision)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("batch of revisions %v, want %v", got, tt.want)
			}
		})
	}
}
