package main

import (
	"testing"

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
