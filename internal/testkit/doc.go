// Package testkit holds the helpers the tests of every package share:
// polling with a deadline, a goroutine-safe buffer for captured output, a
// free loopback address, a fake Modal control plane wired for the SDK, and
// the TestMain leak check.
//
// Test-only: nothing outside _test.go files imports it (TestNotImported
// checks). It depends on the standard library, goleak and fakemodal only,
// so any package of the module can use it in its tests; helpers that need
// the engine live beside it (pool/pooltest).
package testkit
