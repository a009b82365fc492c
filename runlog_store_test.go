package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

// TestRunLogSaysWhatHappenedToThePool: run's log has one line for each
// thing done to the pool behind the controller's back, which it acted on
// in silence before: its store file moved away, the target set by another
// process, an older copy of the store put back, its local agent killed.
func TestRunLogSaysWhatHappenedToThePool(t *testing.T) {
	state := t.TempDir()
	name := "runlog" + strconv.Itoa(os.Getpid()) // agents are found by their pool's name: other tests' are not ours
	env := cliEnv(state, "SANDBOXPOOL_POOL="+name)
	t.Cleanup(func() { tearDown(t, env) })
	ctl := startRun(t, env, "--size", "2", "--listen", "", "--health-every", "1s")
	testkit.Eventually(t, 30*time.Second, "2 ready", func() bool { return len(readyIDs(check(t, env))) == 2 })
	file := filepath.Join(state, name+".json")
	old, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	logged := func(what, line string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !strings.Contains(ctl.logs.String(), line); {
			if time.Now().After(deadline) {
				t.Fatalf("no line for %s in run's log:\n%s", what, ctl.logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	if err := os.Rename(file, file+".moved"); err != nil {
		t.Fatal(err)
	}
	logged("the store moved away", file+" was moved away or deleted (a new one is started with the pool's target and timing): the 2 sandboxes this process knew pooled are adopted again")
	if r := cli(t, env, "maintain", "--size", "3"); r.code != 0 {
		t.Fatalf("maintain --size 3: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	logged("the resize elsewhere", "target 2 -> 3, set by another process")
	if err := os.WriteFile(file, old, 0o600); err != nil {
		t.Fatal(err)
	}
	logged("the old copy", file+" went back in time (an older copy was put back")
	logged("its target", "target 3 -> 2 with it")
	agents := agentPids(name)
	if len(agents) != 1 {
		t.Fatalf("agents %v, want one", agents)
	}
	if err := syscall.Kill(agents[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	logged("the agent's death", `the local agent of pool \"`+name+`\" died (killed or crashed): every sandbox it ran ended with it`)
	testkit.Eventually(t, 30*time.Second, "2 ready again", func() bool { return len(readyIDs(check(t, env))) == 2 })
	logs := ctl.logs.String()
	for _, line := range []string{"was moved away or deleted", "set by another process", "went back in time", "every sandbox it ran ended with it"} {
		if n := strings.Count(logs, line); n != 1 {
			t.Errorf("%q logged %d times, want once:\n%s", line, n, logs)
		}
	}
}
