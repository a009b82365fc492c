package local_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/local"
)

// TestWatchLossHearsTheAgentDie: a kill -9 of the agent is a loss, heard
// with no request to any agent; a clean stop (terminate --all) is none,
// and the watch ends with its context.
func TestWatchLossHearsTheAgentDie(t *testing.T) {
	t.Parallel()
	b := newBackend(t, local.Options{Pool: "watched"})
	var mu sync.Mutex
	var losses []pool.BackendLoss
	heard := func() []pool.BackendLoss { mu.Lock(); defer mu.Unlock(); return slices.Clone(losses) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.WatchLoss(ctx, func(l pool.BackendLoss) { mu.Lock(); losses = append(losses, l); mu.Unlock() })
	}()
	t.Cleanup(func() { cancel(); <-done })

	mustCreate(t, b, time.Minute)
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	ref := mustCreate(t, b, time.Minute) // a new agent, after a clean stop
	pid := agentPid(t, b)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "the loss heard", func() bool { return len(heard()) > 0 })
	got := heard()
	if len(got) != 1 || !strings.Contains(got[0].Why, `the local agent of pool "watched" died (killed or crashed)`) || !ref.CreatedAt.Before(got[0].Before) {
		t.Fatalf("after a clean stop and a kill -9: losses %+v, want one, after %s was created", got, ref.ID)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("WatchLoss did not return when its context ended")
	}
}

// An agent killed before the watch reached it (right after its start) is
// heard too: the watch finds its lock free without the clean stop's marker.
func TestWatchLossHearsAnAgentThatDiedBeforeTheWatch(t *testing.T) {
	t.Parallel()
	b := newBackend(t, local.Options{Pool: "unwatched"})
	mustCreate(t, b, time.Minute)
	if err := syscall.Kill(agentPid(t, b), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var losses []pool.BackendLoss
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.WatchLoss(ctx, func(l pool.BackendLoss) { mu.Lock(); losses = append(losses, l); mu.Unlock() })
	}()
	t.Cleanup(func() { cancel(); <-done })
	testkit.Eventually(t, 10*time.Second, "the loss heard", func() bool { mu.Lock(); defer mu.Unlock(); return len(losses) > 0 })
	// Said once, however often the watch finds no agent since.
	time.Sleep(2500 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(losses) != 1 {
		t.Fatalf("losses %+v, want one", losses)
	}
}

// The agent's log explains each sandbox's end: a termination names who
// asked for it (this test's pid), an expiry says so.
func TestAgentLogSaysWhyEachSandboxEnded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := newBackend(t, local.Options{Pool: "why", StateDir: dir})
	gone := mustCreate(t, b, time.Minute)
	expiring := mustCreate(t, b, 2*time.Second)
	if err := b.Terminate(context.Background(), gone.ID); err != nil {
		t.Fatal(err)
	}
	asked := fmt.Sprintf("sandbox %s: terminated, asked by pid %d (", gone.ID, os.Getpid())
	expired := fmt.Sprintf("sandbox %s: expired", expiring.ID)
	testkit.Eventually(t, 20*time.Second, "both ends in the agent's log", func() bool {
		data, _ := os.ReadFile(filepath.Join(dir, "why.agent.log"))
		return strings.Contains(string(data), asked) && strings.Contains(string(data), expired)
	})
}
