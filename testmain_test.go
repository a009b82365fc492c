package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gofrs/flock"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
	"github.com/sandboxpool/sandboxpool/pool/local"
)

// binary is the sandboxpool binary built once for the tests that run it as
// a user would.
var binary string

func TestMain(m *testing.M) {
	local.MaybeRunChild()
	dir, err := os.MkdirTemp("", "sandboxpool-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "sandboxpool")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build sandboxpool: %v\n%s", err, out)
		os.Exit(1)
	}
	// Every goroutine a test starts (in-process controllers and dashboards,
	// process waiters) ends with it.
	testkit.Main(testkit.Teardown(m, func() { os.RemoveAll(dir) }))
}

// cliEnv is an environment with nothing of the caller's SANDBOXPOOL_ settings.
func cliEnv(stateDir string, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SANDBOXPOOL_") && !strings.HasPrefix(kv, "XDG_STATE_HOME=") {
			env = append(env, kv)
		}
	}
	env = append(env, "SANDBOXPOOL_STATE_DIR="+stateDir)
	return append(env, extra...)
}

// tearDown is a test's last word on its pool (terminate --all, with args
// such as "--pool", p), then a wait until the pool's agent has exited: it
// writes its log and removes its socket as it goes, and the test's temp
// dir, removed next, was once found "directory not empty" meanwhile.
func tearDown(t *testing.T, env []string, args ...string) {
	t.Helper()
	cli(t, env, append([]string{"terminate", "--all"}, args...)...)
	stateDir, poolName := "", "default"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "SANDBOXPOOL_STATE_DIR="); ok {
			stateDir = v
		}
		// A pool named in the environment: its agent is the one to wait for.
		if v, ok := strings.CutPrefix(kv, "SANDBOXPOOL_POOL="); ok {
			poolName = v
		}
	}
	for i, a := range args {
		if a == "--pool" && i+1 < len(args) {
			poolName = args[i+1]
		}
	}
	if stateDir == "" {
		return
	}
	// The live agent holds its lock file: free means it is gone.
	lock := flock.New(filepath.Join(stateDir, poolName+".agent.lock"))
	if !testkit.Until(15*time.Second, func() bool {
		ok, err := lock.TryLock()
		if ok {
			_ = lock.Unlock()
		}
		return ok || os.IsNotExist(err)
	}) {
		t.Logf("tear down: pool %s's agent still holds %s 15 s after terminate --all", poolName, lock.Path())
	}
}

type result struct {
	stdout, stderr string
	code           int
}

// cli runs the binary to completion.
func cli(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return result{out.String(), errb.String(), code}
}

// syncBuffer is the chaos tests' name for testkit.SyncBuffer (until they
// adopt testkit).
type syncBuffer = testkit.SyncBuffer

// controller is a `sandboxpool run` process.
type controller struct {
	cmd  *exec.Cmd
	logs *testkit.SyncBuffer
	done chan struct{}
}

func startRun(t *testing.T, env []string, args ...string) *controller {
	t.Helper()
	return startProcess(t, env, exec.Command(binary, append([]string{"run"}, args...)...))
}

// startProcess starts cmd with env, its output kept, killed at cleanup.
func startProcess(t *testing.T, env []string, cmd *exec.Cmd) *controller {
	t.Helper()
	cmd.Env = env
	logs := &testkit.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &controller{cmd: cmd, logs: logs, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() { c.kill() })
	return c
}

func (c *controller) kill() {
	select {
	case <-c.done:
	default:
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// stop sends SIGTERM and returns how long the process took to exit.
func (c *controller) stop(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return time.Since(start)
	case <-time.After(10 * time.Second):
		t.Fatalf("controller did not stop on SIGTERM; logs:\n%s", c.logs.String())
		return 0
	}
}

// check runs `check --json` and decodes it.
func check(t *testing.T, env []string, args ...string) httpapi.PoolView {
	t.Helper()
	r := cli(t, env, append([]string{"check", "--json"}, args...)...)
	if r.code == 1 && strings.Contains(r.stderr, "does not exist") {
		return httpapi.PoolView{} // not made yet: a controller just started
	}
	if r.code != 0 {
		t.Fatalf("check: exit %d: %s", r.code, r.stderr)
	}
	var v httpapi.PoolView
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("check --json: %v\n%s", err, r.stdout)
	}
	return v
}

func readyIDs(v httpapi.PoolView) []string {
	var ids []string
	for _, s := range v.Sandboxes {
		if s.State == "ready" {
			ids = append(ids, s.ID)
		}
	}
	return ids
}
