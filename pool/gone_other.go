//go:build !unix

package pool

// processGone cannot tell here: a holder is never taken for dead.
var processGone = func(int) bool { return false }

// NodeID cannot tell here: "" (no holder is ever taken for dead).
func NodeID() string { return "" }
