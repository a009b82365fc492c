package main

import (
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

// TestCheckSaysTheControllersCountersNeedItsToken: `check` takes the
// warm-hit ratio and waste from the running controller's API; one that
// wants a token check was not given says so instead of printing check's
// own 0% as the pool's (a trial read "warm-hit ratio 0%" after all-warm
// claims).
func TestCheckSaysTheControllersCountersNeedItsToken(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	const token = "trialtoken-0123456789abcdef"
	t.Cleanup(func() { tearDown(t, env) })
	c := startRun(t, cliEnv(state, "SANDBOXPOOL_TOKEN="+token), "--size", "1", "--listen", testkit.FreeAddr(t))
	testkit.Eventually(t, 30*time.Second, "1 ready", func() bool {
		r := cli(t, env, "check")
		return strings.Contains(r.stdout, "ready 1,") && strings.Contains(r.stdout, "api ")
	})
	r := cli(t, env, "check")
	if !strings.Contains(r.stdout, "warm-hit ratio and waste unknown: the controller's API at ") || !strings.Contains(r.stdout, "wants its token") {
		t.Errorf("check without the token: exit %d:\n%s%s\ncontroller:\n%s", r.code, r.stdout, r.stderr, c.logs.String())
	}
	r = cli(t, cliEnv(state, "SANDBOXPOOL_TOKEN="+token), "check")
	if !strings.Contains(r.stdout, "warm-hit ratio -: no claim served yet (0 failed), waste") {
		t.Errorf("check with the token: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestCheckSaysCountersAreUnknownWithoutAController: with no controller
// running (or one without an API), nobody has counted the pool's claims:
// check says the warm-hit ratio is unknown instead of printing its own 0%
// as if it were measured.
func TestCheckSaysCountersAreUnknownWithoutAController(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	t.Cleanup(func() { tearDown(t, env) })
	if r := cli(t, env, "maintain", "--size", "1"); r.code != 0 {
		t.Fatalf("maintain: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := cli(t, env, "claim"); r.code != 0 {
		t.Fatalf("claim: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	r := cli(t, env, "check")
	if !strings.Contains(r.stdout, "warm-hit ratio and waste unknown: no controller runs to count claims\n") || strings.Contains(r.stdout, "warm-hit ratio 0%") {
		t.Errorf("check with no controller: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	c := startRun(t, env, "--listen", "")
	testkit.Eventually(t, 30*time.Second, "the controller in check", func() bool {
		return strings.Contains(cli(t, env, "check").stdout, "maintained by")
	})
	r = cli(t, env, "check")
	if !strings.Contains(r.stdout, "warm-hit ratio and waste unknown: the controller serves no API to ask") {
		t.Errorf("check with a controller without an API: exit %d:\n%s%s\ncontroller:\n%s", r.code, r.stdout, r.stderr, c.logs.String())
	}
}
