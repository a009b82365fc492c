package ui

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

func TestRunQuitsOnQ(t *testing.T) {
	f := newFakeEngine(clockwork.NewFakeClockAt(t0))
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), f, Options{Input: strings.NewReader("q"), Output: io.Discard, Clock: f.clk})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after q")
	}
	if n := f.subscribers(); n != 0 {
		t.Fatalf("%d subscriptions left after Run", n)
	}
}

func TestRunReturnsWhenCtxEnds(t *testing.T) {
	f := newFakeEngine(clockwork.NewFakeClockAt(t0))
	pr, pw := io.Pipe() // input that never says anything
	defer pw.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, f, Options{Input: pr, Output: io.Discard, Clock: f.clk}) }()
	testkit.Eventually(t, 10*time.Second, "Run to subscribe", func() bool { return f.subscribers() > 0 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after ctx ended")
	}
	if n := f.subscribers(); n != 0 {
		t.Fatalf("%d subscriptions left after Run", n)
	}
}
