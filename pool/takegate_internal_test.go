package pool

import (
	"context"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// A burst's claims leave gaps between them: the gate stays busy for
// takeQuiet after the last claim left, and a backfill waiting on it goes
// once that quiet has passed (or at its bound).
func TestTakeGateBusyUntilQuietAfterTheLastClaim(t *testing.T) {
	clk := clockwork.NewFakeClockAt(time.Unix(1e9, 0))
	g := takeGate{clk: clk}
	if g.busy() {
		t.Fatal("busy before any claim")
	}
	g.enter()
	if !g.busy() {
		t.Fatal("not busy with a claim in flight")
	}
	g.leave()
	if !g.busy() {
		t.Fatal("not busy right after a claim left: a burst's next claim is a round trip away")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.waitIdle(context.Background(), clk, time.Second)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := clk.BlockUntilContext(ctx, 1); err != nil {
		t.Fatal(err)
	}
	clk.Advance(takeQuiet / 2)
	select {
	case <-done:
		t.Fatal("the backfill went within the quiet after a claim")
	case <-time.After(20 * time.Millisecond):
	}
	clk.Advance(takeQuiet)
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("the backfill still waits after the quiet")
	}
	if g.busy() {
		t.Fatal("busy after the quiet")
	}
}

// Claims in flight hold a waiting backfill back up to its bound, not longer.
func TestTakeGateWaitIsBounded(t *testing.T) {
	clk := clockwork.NewFakeClockAt(time.Unix(1e9, 0))
	g := takeGate{clk: clk}
	g.enter()
	defer g.leave()
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.waitIdle(context.Background(), clk, 20*time.Millisecond)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := clk.BlockUntilContext(ctx, 1); err != nil {
		t.Fatal(err)
	}
	clk.Advance(20 * time.Millisecond)
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("the backfill waited past its bound")
	}
}
