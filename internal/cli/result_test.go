package cli

import (
	"bytes"
	"strings"
	"testing"

	"hostel/internal/api"
)

// TestWriteResult: the human summary of a deploy says what is live, what
// was switched back, how the confirm window ended and which service
// failed, at which step and why (its first line: the detail goes to
// stderr with the error).
func TestWriteResult(t *testing.T) {
	fail := func(step string) []api.DeployFailure {
		return []api.DeployFailure{{Service: "web", Version: "abc", Step: step, Reason: "web-abc crashed (exit status 3)\nlog line"}}
	}
	tests := []struct {
		name string
		res  api.DeployResult
		want []string
		not  []string
	}{
		{"live", api.DeployResult{Generation: 2, Started: []string{"web-abc"}, Stopped: []string{"web-old"}, Confirmation: "confirmed"},
			[]string{"generation 2 is live: 1 started, 1 stopped"}, []string{"failed", "not confirmed", "504"}},
		{"aborted", api.DeployResult{Generation: 2, Aborted: 3},
			[]string{"3 requests to old versions were still running at their stop grace and were ended with 504"}, nil},
		{"rolled back", api.DeployResult{Generation: 1, RolledBack: true, RolledBackFrom: 2, Started: []string{"web-abc"}, Stopped: []string{"web-abc"},
			Confirmation: "failed", Failures: fail(api.StepConfirm), Error: "deploy rolled back"},
			[]string{"generation 2 went live and was switched back: generation 1 is live", "failed: web abc (confirm): web-abc crashed (exit status 3)"}, []string{"log line"}},
		{"failed before the switch", api.DeployResult{Generation: 1, Failures: fail(api.StepStart), Error: "deploy failed before the switch"},
			[]string{"nothing changed: generation 1 is still live", "failed: web abc (start)"}, []string{"is live:"}},
		{"rollback failed", api.DeployResult{Generation: 3, Error: "nothing switched: store closed"},
			[]string{"nothing changed: generation 3 is still live"}, nil},
		{"superseded", api.DeployResult{Generation: 2, Confirmation: "superseded"},
			[]string{"generation 2 is live", "not confirmed: a later deploy or rollback ended the confirm window"}, nil},
		{"pending", api.DeployResult{Generation: 2, Confirmation: "pending", Error: "cut short"},
			[]string{"not confirmed yet"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			writeResult(&b, &tt.res)
			got := b.String()
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("got %q, want it to say %q", got, w)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(got, n) {
					t.Errorf("got %q, which should not say %q", got, n)
				}
			}
		})
	}
}

// TestConfirmedMark: `hostel generations` marks every generation not
// confirmed, and why.
func TestConfirmedMark(t *testing.T) {
	tests := []struct {
		g    api.Generation
		want string
	}{
		{api.Generation{Confirmed: true, Confirmation: "confirmed"}, "yes"},
		{api.Generation{Confirmation: "failed", ConfirmError: "service \"web\": crashed\nmore"}, `no (failed: service "web": crashed)`},
		{api.Generation{Confirmation: "pending"}, "no (pending)"},
		{api.Generation{Confirmation: "skipped"}, "no (skipped)"},
		{api.Generation{}, "unknown"},
	}
	for _, tt := range tests {
		if got := confirmedMark(tt.g); got != tt.want {
			t.Errorf("confirmedMark(%+v) = %q, want %q", tt.g, got, tt.want)
		}
	}
}
