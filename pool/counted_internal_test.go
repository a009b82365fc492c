package pool

import (
	"strconv"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// TestCountClaimOnce: a claim counts once within 10 minutes; once 4,096
// are held, those older than that are forgotten oldest first, a few per
// claim, never by a walk over all of them.
func TestCountClaimOnce(t *testing.T) {
	clk := clockwork.NewFakeClock()
	c := &Controller{clk: clk}
	for i := range 5000 {
		if !c.countClaimOnceLocked("sb-" + strconv.Itoa(i)) {
			t.Fatalf("claim %d not news", i)
		}
		clk.Advance(time.Second) // 5,000 claims over 83 minutes
	}
	if c.countClaimOnceLocked("sb-4999") {
		t.Fatal("a claim counted twice within 10 minutes")
	}
	// Held: the 4,096 newest at most, plus the ones not yet 10 minutes old.
	if n := len(c.counted); n > 4096+1 {
		t.Fatalf("%d claims held, want at most 4,097", n)
	}
	if n := len(c.countedOrder); n != len(c.counted) {
		t.Fatalf("order holds %d, map %d", n, len(c.counted))
	}
	// A claim given back (forgotten) and claimed again counts again.
	delete(c.counted, "sb-4998")
	if !c.countClaimOnceLocked("sb-4998") {
		t.Fatal("a claim given back and taken again is not news")
	}
}
