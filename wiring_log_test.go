package main

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

// TestRunLogsSandboxesLeavingThePool: run's log says when a sandbox leaves
// the pool through a store change (a pooled one whose workload was killed,
// found ended when the pool terminated it; one another claim holds), and
// stays quiet about passes and bare store polls. Before, every store_changed
// was dropped: a kill -9'd workload's sandbox left the pool without a line.
func TestRunLogsSandboxesLeavingThePool(t *testing.T) {
	for _, tc := range []struct {
		e    pool.Event
		want bool
	}{
		{pool.Event{Kind: pool.EventStoreChanged, SandboxID: "sb-1", Message: "sb-1 had ended already: out of the pool"}, true},
		{pool.Event{Kind: pool.EventStoreChanged, SandboxID: "sb-1", Message: "sb-1 is claimed elsewhere (the backend says so): not handed out again"}, true},
		{pool.Event{Kind: pool.EventStoreChanged}, false},
		{pool.Event{Kind: pool.EventMaintained}, false},
		{pool.Event{Kind: pool.EventCreating, SandboxID: "new-1"}, true}, // at debug
		{pool.Event{Kind: pool.EventClaimed, SandboxID: "sb-1"}, true},
	} {
		if got := runLogs(tc.e); got != tc.want {
			t.Errorf("runLogs(%s %q) = %v, want %v", tc.e.Kind, tc.e.Message, got, tc.want)
		}
	}
}

// countingWriter counts the writes it gets.
type countingWriter struct {
	mu     sync.Mutex
	writes int
	buf    bytes.Buffer
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	return c.buf.Write(p)
}

func (c *countingWriter) seen() (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes, c.buf.String()
}

// TestLaterWriterWritesABurstAtOnce: the API's request lines of a burst go
// out in one write after the delay, in order; Flush writes what is held at
// once, and a flood past laterMax is not held.
func TestLaterWriterWritesABurstAtOnce(t *testing.T) {
	out := &countingWriter{}
	l := newLaterWriter(out, 50*time.Millisecond)
	var want strings.Builder
	for i := range 45 {
		line := fmt.Sprintf("request %d\n", i)
		want.WriteString(line)
		if _, err := l.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := out.seen(); n != 0 {
		t.Fatalf("%d writes before the delay passed, want none", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for n, _ := out.seen(); n == 0; n, _ = out.seen() {
		if time.Now().After(deadline) {
			t.Fatal("nothing written 5 s after the lines")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n, got := out.seen(); n != 1 || got != want.String() {
		t.Fatalf("%d writes of %q, want 1 of the 45 lines in order", n, got)
	}

	// Again after the timer fired once (it is re-armed), then Flush.
	_, _ = l.Write([]byte("last\n"))
	l.Flush()
	if n, got := out.seen(); n != 2 || !strings.HasSuffix(got, "request 44\nlast\n") {
		t.Fatalf("after Flush: %d writes, ending %q", n, got[max(0, len(got)-30):])
	}
	l.Flush() // nothing held: no write
	big := bytes.Repeat([]byte("x"), laterMax)
	_, _ = l.Write(big)
	if n, _ := out.seen(); n != 3 {
		t.Fatalf("%d writes after a %d-byte line, want it written at once", n, len(big))
	}
}
