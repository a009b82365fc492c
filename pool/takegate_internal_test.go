package pool

import (
	"context"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// A burst's claims leave gaps between them: the gate stays busy for
// takeQuiet after the last claim left, and a backfill waiting on it goes
// once that quiet has passed, whatever the injected clock does.
func TestTakeGateBusyUntilQuietAfterTheLastClaim(t *testing.T) {
	clk := clockwork.NewFakeClock() // never moved: the quiet is real time
	var g takeGate
	if g.busy() {
		t.Fatal("busy before any claim")
	}
	g.enter()
	if !g.busy() {
		t.Fatal("not busy with a claim in flight")
	}
	g.leave()
	left := time.Now()
	if !g.busy() {
		t.Fatal("not busy right after a claim left: a burst's next claim is a round trip away")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.waitIdle(context.Background(), clk, time.Second)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the backfill still waits long after the quiet")
	}
	if waited := time.Since(left); waited < takeQuiet {
		t.Fatalf("the backfill went %s after the claim, within the quiet", waited)
	}
	if g.busy() {
		t.Fatal("busy after the quiet")
	}
}

// Claims in flight hold a waiting backfill back up to its bound (on the
// injected clock), not longer.
func TestTakeGateWaitIsBounded(t *testing.T) {
	clk := clockwork.NewFakeClock()
	var g takeGate
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

// fakePending counts what a take's record was asked.
type fakePending struct{ ready, records int }

func (p *fakePending) Record(context.Context) error { p.records++; return nil }
func (p *fakePending) Ready()                       { p.ready++ }
func (p *fakePending) Cancel() bool                 { return false }

// A take that leaves while others are in flight holds its store record
// back (Ready: any write records it); the last take to leave writes every
// one held, and so does one that finds heldMax held.
func TestTakeGateHoldsRecordsUntilTheLastTakeLeaves(t *testing.T) {
	var g takeGate
	var flushed [][]heldRecord
	g.flush = func(h []heldRecord) { flushed = append(flushed, h) }
	g.enter()
	g.enter()
	g.enter()
	a, b := &fakePending{}, &fakePending{}
	g.leaveRecording(Entry{Ref: Ref{ID: "a"}}, a)
	if len(flushed) != 0 || a.ready != 1 {
		t.Fatalf("a left with two takes in flight: flushed %v, ready %d", flushed, a.ready)
	}
	g.leaveRecording(Entry{Ref: Ref{ID: "b"}}, b)
	if len(flushed) != 0 || b.ready != 1 {
		t.Fatalf("b left with one take in flight: flushed %v", flushed)
	}
	g.leave() // the last, with no record of its own
	if len(flushed) != 1 || len(flushed[0]) != 2 || flushed[0][0].got.ID != "a" || flushed[0][1].got.ID != "b" {
		t.Fatalf("the last take left: flushed %v, want a and b once", flushed)
	}

	// Alone, a take writes its own at once.
	flushed = nil
	g.enter()
	c := &fakePending{}
	g.leaveRecording(Entry{Ref: Ref{ID: "c"}}, c)
	if len(flushed) != 1 || len(flushed[0]) != 1 {
		t.Fatalf("a take alone: flushed %v", flushed)
	}

	// A stream that never drains still writes every heldMax.
	flushed = nil
	g.enter()
	for i := range heldMax + 1 {
		g.enter()
		g.leaveRecording(Entry{Ref: Ref{ID: string(rune('a' + i))}}, &fakePending{})
	}
	if len(flushed) != 1 || len(flushed[0]) != heldMax+1 {
		t.Fatalf("%d takes left with one in flight: flushed %d times (%v)", heldMax+1, len(flushed), flushed)
	}
	g.leave()
}
