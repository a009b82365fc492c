package testkit

import (
	"testing"
	"time"
)

// maxTick bounds the pause between two polls: short enough that a cheap
// condition is seen at once, long enough that a costly one (a CLI run, a
// scrape) does not eat a shared CPU.
const maxTick = 50 * time.Millisecond

// Eventually polls cond until it holds, failing t with what and the time
// waited when timeout passes first. Polls start 1 ms apart and back off to
// 50 ms. It waits in real time: goroutines run on their own even under a
// fake clock.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Until(timeout, cond) {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// Until polls cond like Eventually and reports whether it held before
// timeout passed, for callers that go on (or say more) when it did not.
func Until(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.Millisecond
	for !cond() {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		time.Sleep(min(tick, left))
		tick = min(2*tick, maxTick)
	}
	return true
}
