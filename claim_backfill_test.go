package main

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

// A claim with no controller running answers at once, then holds the pool
// for its own backfill until the new sandbox is ready. The backfill's
// creation is held back (a workload that waits for a gate file) so that
// the order is certain: the answer comes while it cannot be done.
func TestClaimAnswersBeforeItsBackfillLocal(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	t.Cleanup(func() { tearDown(t, env) })
	gate := filepath.Join(t.TempDir(), "gate")
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	w := workloadCmd(t, "while [ ! -e '"+gate+"' ]; do sleep 0.05; done;")
	if r := cli(t, env, "maintain", "--size", "1", "--cmd", w, "--health-timeout", "60s"); r.code != 0 {
		t.Fatalf("maintain: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if err := os.Remove(gate); err != nil {
		t.Fatal(err)
	}
	claimAnswersBeforeItsBackfill(t, env, nil, func() {
		if err := os.WriteFile(gate, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	})
}

// The same on Modal, where the claim's answer (one queue write) used to
// come before its lease (a few round trips): it exited without a backfill.
func TestClaimAnswersBeforeItsBackfillModal(t *testing.T) {
	f, err := fakemodal.Start(fakemodal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	state := t.TempDir()
	env := modalEnv(t, state, f.Env()...)
	flags := []string{"--backend", "modal", "--pool", "backfill"}
	if r := cli(t, env, append([]string{"maintain", "--size", "1"}, flags...)...); r.code != 0 {
		t.Fatalf("maintain: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	release := f.HoldCreates()
	t.Cleanup(release)
	claimAnswersBeforeItsBackfill(t, env, flags, release)
}

// claimAnswersBeforeItsBackfill claims from a pool of one ready sandbox
// that no controller maintains, while the backend cannot finish a
// creation until release: the claim's whole answer (its output closed)
// comes first, then the pool is held by the claim's backfill, which ends
// with the pool refilled once release lets the creation finish.
func claimAnswersBeforeItsBackfill(t *testing.T, env, flags []string, release func()) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"claim", "--json"}, flags...)...)
	cmd.Env = env
	var errb testkit.SyncBuffer
	cmd.Stderr = &errb
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	answered := make(chan []byte, 1)
	go func() {
		defer close(exited)
		b, _ := io.ReadAll(out) // to EOF: the answer is whole
		answered <- b
		waitErr = cmd.Wait()
	}()
	var answer []byte
	select {
	case answer = <-answered:
	case <-time.After(30 * time.Second):
		t.Fatalf("no answer from the claim within 30s while its backfill cannot finish; stderr:\n%s", errb.String())
	}
	var claim httpapi.ClaimView
	if err := json.Unmarshal(answer, &claim); err != nil || claim.ID == "" {
		t.Fatalf("claim --json answered %q: %v; stderr:\n%s", answer, err, errb.String())
	}
	testkit.Eventually(t, 30*time.Second, "the pool held by the claim's backfill", func() bool {
		v := check(t, env, flags...)
		return v.MaintainedBy != nil && v.MaintainedBy.Role == pool.RoleBackfill && v.MaintainedBy.Pid == cmd.Process.Pid
	})
	release()
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("claim: %v; stderr:\n%s", waitErr, errb.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("the claim's backfill did not end within 60s; stderr:\n%s", errb.String())
	}
	v := check(t, env, flags...)
	if ready := readyIDs(v); len(ready) != 1 || slices.Contains(ready, claim.ID) || countViewState(v, pool.StateClaimed) != 1 {
		t.Fatalf("after the claim's backfill: ready %v, %d claimed; want 1 new ready and %s claimed", ready, countViewState(v, pool.StateClaimed), claim.ID)
	}
	if v.MaintainedBy != nil {
		t.Fatalf("the claim's backfill left the lease held: %+v", *v.MaintainedBy)
	}
	if s := errb.String(); strings.TrimSpace(s) != "" {
		t.Errorf("the claim said on stderr:\n%s", s)
	}
}
