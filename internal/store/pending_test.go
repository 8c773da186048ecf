package store_test

import (
	"errors"
	"slices"
	"testing"

	"hostel/internal/store"
)

func TestPending(t *testing.T) {
	lost := &store.CompactedError{From: 1, Compacted: 3}
	tests := []struct {
		name   string
		events []store.Event
		close  bool
		want   []uint64 // the batch's revisions
		err    error
	}{
		{name: "one", events: []store.Event{{Revision: 1}}, want: []uint64{1}},
		{name: "all there", events: []store.Event{{Revision: 1}, {Revision: 2}, {Revision: 2}}, want: []uint64{1, 2, 2}},
		{name: "ended", close: true, err: store.ErrWatchEnded},
		{name: "ended behind events", events: []store.Event{{Revision: 1}}, close: true, err: store.ErrWatchEnded},
		{name: "lost", events: []store.Event{{Revision: 1}, {Err: lost}}, err: lost},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			events := make(chan store.Event, len(tt.events))
			for _, ev := range tt.events {
				events <- ev
			}
			if tt.close {
				close(events)
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
