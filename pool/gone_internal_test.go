package pool

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

// A controller killed with -9 is gone once it is a zombie, not only once
// reaped: the restarted one must not refuse the pool to it meanwhile.
func TestProcessGone(t *testing.T) {
	if processGone(os.Getpid()) {
		t.Fatal("this process taken for gone")
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if processGone(pid) {
		t.Fatal("a running child taken for gone")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Not waited for: a zombie until Wait below.
	testkit.Eventually(t, 10*time.Second, "the killed child gone (a zombie)", func() bool { return processGone(pid) })
	if _, err := os.Stat("/proc/self/stat"); err == nil {
		if err := syscall.Kill(pid, 0); err != nil {
			t.Fatalf("the child was reaped already (%v): the zombie case went untested", err)
		}
	}
	_ = cmd.Wait()
	if !processGone(pid) {
		t.Fatal("a reaped child taken for alive")
	}
	// Where /proc tells, this process's node is known (else no holder is
	// ever taken for dead, and the restart waits are off).
	if _, err := os.Stat("/proc/self/ns/pid"); err == nil && NodeID() == "" {
		t.Fatal("no node id with /proc mounted")
	}
}
