package store

import (
	"testing"
)

// TestDecodeOlderGeneration: a generation stored before hostel kept its
// plan (or its confirm window) still loads, with neither.
func TestDecodeOlderGeneration(t *testing.T) {
	old := `{"number":3,"time":"2026-01-02T03:04:05Z","spec_hash":"h","spec":{"services":{"web":{"exec":["/bin/web"]}}},"inputs":{},"versions":{"web":"abc123def456"}}`
	g, err := DecodeGeneration([]byte(old), func(string) ([]byte, bool) { return nil, false })
	if err != nil {
		t.Fatal(err)
	}
	if g.Number != 3 || g.Versions["web"] != "abc123def456" || g.Plan != nil || g.Confirm != nil {
		t.Errorf("decoded %+v; want generation 3 of web abc123def456, without plan or confirm", g)
	}
}
