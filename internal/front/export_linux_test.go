package front

// LoopPartialWrites counts responses a client's socket did not take at once.
func LoopPartialWrites() int64 { return loopPartialWrites.Load() }

// MaxLoopResponse is the largest response an event loop forwards whole.
const MaxLoopResponse = maxLoopResponse
