package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
)

// TestAgentDeathEndsItsSandboxesAtOnce: a kill -9 of the local agent ends
// every sandbox it ran (its --cmd children die with it), and the controller
// knows at once: the claimed one leaves the pool's record with a line that
// says why, and the pool refills, with no probe, pass or sweep due for a
// minute to find it out (it stayed claimed until the sweep, 10 passes
// later, logged "ended: how is unknown").
func TestAgentDeathEndsItsSandboxesAtOnce(t *testing.T) {
	state := t.TempDir()
	name := fmt.Sprintf("death%d", os.Getpid()) // agentPids looks machine-wide
	env := cliEnv(state, "SANDBOXPOOL_POOL="+name)
	t.Cleanup(func() { tearDown(t, env) })
	ctl := startRun(t, env, "--size", "1", "--cmd", workloadCmd(t, ""), "--listen", "",
		"--maintain-every", "1m", "--health-every", "1m")
	testkit.Eventually(t, 30*time.Second, "1 ready", func() bool { return len(readyIDs(check(t, env))) == 1 })
	r := cli(t, env, "claim")
	if r.code != 0 {
		t.Fatalf("claim: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	var claimed string
	testkit.Eventually(t, 30*time.Second, "the backfill", func() bool {
		v := check(t, env)
		for _, s := range v.Sandboxes {
			if s.State == pool.StateClaimed {
				claimed = s.ID
			}
		}
		return len(readyIDs(v)) == 1 && claimed != ""
	})
	ready := readyIDs(check(t, env))[0]
	agents := agentPids(name)
	if len(agents) != 1 {
		t.Fatalf("agents %v, want one", agents)
	}
	if err := syscall.Kill(agents[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, "the claimed sandbox out of the pool's record, the pool refilled", func() bool {
		v := check(t, env)
		ids := readyIDs(v)
		return countViewState(v, pool.StateClaimed) == 0 && len(ids) == 1 && ids[0] != ready
	})
	logs := ctl.logs.String()
	for _, line := range []string{
		`the local agent of pool \"` + name + `\" died (killed or crashed): every sandbox it ran ended with it (of this pool's, 1 pooled and 1 claimed)`,
		claimed + `, claimed by cli, ended: the local agent of pool \"` + name + `\" died (killed or crashed)`,
	} {
		if n := strings.Count(logs, line); n != 1 {
			t.Errorf("%q logged %d times, want once:\n%s", line, n, logs)
		}
	}
	if strings.Contains(logs, "how is unknown") {
		t.Errorf("an end logged as unknown:\n%s", logs)
	}
}
