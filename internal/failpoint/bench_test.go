package failpoint

import "testing"

// BenchmarkSite is what a site costs: without the failpoints tag an empty
// loop (the call is compiled away); with it, one atomic load and a map
// lookup when nothing is armed, and when another point is armed.
func BenchmarkSite(b *testing.B) {
	b.Run("Inject", func(b *testing.B) {
		for range b.N {
			if err := Inject("store-before-commit"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Hit", func(b *testing.B) {
		for range b.N {
			Hit("launch-before-start")
		}
	})
}
