package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
)

// TestWorkloadChangeRollsThePool: a controller started with another --cmd
// replaces the pooled sandboxes of the old one, each once its replacement
// is ready: the pool never has fewer ready than its target meanwhile, and
// the log says what it does (they stayed pooled, running the old workload,
// until claimed or expired).
func TestWorkloadChangeRollsThePool(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	t.Cleanup(func() { tearDown(t, env) })
	workloadChangeRollsThePool(t, env, nil, workloadCmd(t, ""), workloadCmd(t, "true;"))
}

// The same on Modal, where a sandbox's tag says what it runs (a key).
func TestWorkloadChangeRollsThePoolModal(t *testing.T) {
	f, err := fakemodal.Start(fakemodal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	env := modalEnv(t, t.TempDir(), f.Env()...)
	flags := []string{"--backend", "modal", "--pool", "rollout"}
	workloadChangeRollsThePool(t, env, flags, "python -m http.server {port}", "python -m http.server {port} --bind 0.0.0.0")
}

func workloadChangeRollsThePool(t *testing.T, env, flags []string, was, now string) {
	t.Helper()
	if r := cli(t, env, append([]string{"maintain", "--size", "3", "--cmd", was}, flags...)...); r.code != 0 {
		t.Fatalf("maintain: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	old := readyIDs(check(t, env, flags...))
	if len(old) != 3 {
		t.Fatalf("ready %v, want 3", old)
	}
	addr := testkit.FreeAddr(t)
	ctl := startRun(t, env, append([]string{"--size", "3", "--cmd", now, "--listen", addr, "--maintain-every", "2s"}, flags...)...)
	// The controller's view: a check elsewhere reads a Modal queue's
	// partitions one by one, not at one instant.
	a := api{t: t, base: "http://" + addr}
	testkit.Eventually(t, 60*time.Second, "every old-workload sandbox replaced", func() bool {
		v, ok := a.pool()
		if !ok {
			return false // not serving yet
		}
		ready := readyIDs(v)
		if len(ready) < 3 {
			t.Fatalf("%d ready during the replacement, want 3 or more: %v\n%s", len(ready), ready, ctl.logs.String())
		}
		return !slices.ContainsFunc(ready, func(id string) bool { return slices.Contains(old, id) })
	})
	want := []string{"rolling replacement: 3 pooled sandboxes run the pool's old workload", "rolling replacement done: every pooled sandbox runs --"}
	for _, id := range old {
		want = append(want, id+" terminated (replaced) by the controller")
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, line := range want {
		for !strings.Contains(ctl.logs.String(), line) {
			if time.Now().After(deadline) {
				t.Fatalf("no line %q in run's log:\n%s", line, ctl.logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
