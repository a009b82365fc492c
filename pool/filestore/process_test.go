package filestore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
)

// Helper processes: the test binary re-executed with helperEnv set.
const (
	helperEnv = "FILESTORE_TEST_HELPER" // take | take-until-killed | lease | try-lease
	dirEnv    = "FILESTORE_TEST_DIR"
	startEnv  = "FILESTORE_TEST_START" // a file: takers say they are ready, then start together when it exists
)

func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("only run as a helper process")
	}
	ctx := context.Background()
	s, err := Open(os.Getenv(dirEnv), "p")
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	defer s.Close()
	me := "pid " + strconv.Itoa(os.Getpid())
	switch mode {
	case "take":
		// Ready (the binary loaded, the store read): say so, then wait for the start.
		start := os.Getenv(startEnv)
		s.Load(ctx)
		os.WriteFile(start+"."+strconv.Itoa(os.Getpid()), nil, 0o600)
		for {
			if _, err := os.Stat(start); err == nil {
				break
			}
			time.Sleep(time.Millisecond)
		}
		for {
			e, _, ok, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: me, Now: time.Now()})
			if err != nil {
				fmt.Println("error:", err)
				os.Exit(1)
			}
			if !ok {
				return
			}
			fmt.Println(e.ID)
		}
	case "take-until-killed":
		// Claims one by one, printing each as soon as it returned.
		for {
			e, _, ok, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: me, Now: time.Now()})
			if err != nil {
				fmt.Println("error:", err)
				os.Exit(1)
			}
			if ok {
				fmt.Println(e.ID)
			}
		}
	case "lease":
		if _, err := s.AcquireLease(ctx, pool.LeaseRecord{Host: "helper " + me}); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("acquired")
		time.Sleep(time.Minute) // until killed
		os.Exit(3)
	case "try-lease":
		_, err := s.AcquireLease(ctx, pool.LeaseRecord{Host: "try " + me})
		var held *pool.LeaseHeldError
		if errors.As(err, &held) {
			fmt.Println("held:", held.Holder.String())
			return
		}
		fmt.Println("unexpected:", err)
	}
}

func helper(t *testing.T, dir, mode string, extraEnv ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), append(extraEnv, helperEnv+"="+mode, dirEnv+"="+dir)...)
	cmd.Stderr = os.Stderr
	return cmd
}

func TestCrossProcessTake(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	const n, procs = 200, 4
	var entries []pool.Entry
	for i := range n {
		entries = append(entries, pool.Entry{Ref: ref(fmt.Sprintf("sb-%03d", i), 100)})
	}
	seed(t, s, pool.Stored{Target: n, HasTarget: true, Entries: entries})

	start := filepath.Join(t.TempDir(), "start")
	outs := make([]string, procs)
	pids := make([]int, procs)
	var wg sync.WaitGroup
	for p := range procs {
		cmd := helper(t, dir, "take", startEnv+"="+start)
		var out strings.Builder
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pids[p] = cmd.Process.Pid
		wg.Go(func() {
			if err := cmd.Wait(); err != nil {
				t.Errorf("helper %d: %v\n%s", p, err, out.String())
			}
			outs[p] = out.String()
		})
	}
	var ready []string
	if !testkit.Until(30*time.Second, func() bool { ready, _ = filepath.Glob(start + ".*"); return len(ready) == procs }) {
		t.Fatalf("%d of %d helpers ready", len(ready), procs)
	}
	if err := os.WriteFile(start, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	takenBy := map[string]int{} // id -> pid
	busy := 0                   // processes that got any: the claims really interleaved
	for p, out := range outs {
		var ids []string
		for line := range strings.Lines(out) {
			if strings.HasPrefix(line, "sb-") { // not the test framework's own lines
				ids = append(ids, strings.TrimSpace(line))
			}
		}
		t.Logf("process %d took %d", p, len(ids))
		if len(ids) > 0 {
			busy++
		}
		for _, id := range ids {
			if prev, dup := takenBy[id]; dup {
				t.Fatalf("%s taken by pid %d and pid %d", id, prev, pids[p])
			}
			takenBy[id] = pids[p]
		}
	}
	if len(takenBy) != n {
		t.Fatalf("%d entries taken, want %d", len(takenBy), n)
	}
	if busy < 2 {
		t.Fatalf("only %d process took entries: no contention was tested", busy)
	}
	st := load(t, s)
	if len(st.Entries) != n || st.Target != n {
		t.Fatalf("file has %d entries, target %d", len(st.Entries), st.Target)
	}
	for _, e := range st.Entries {
		if want := "pid " + strconv.Itoa(takenBy[e.ID]); e.ClaimedBy != want {
			t.Fatalf("%s claimed by %q in the file, printed by %q", e.ID, e.ClaimedBy, want)
		}
	}
}

func TestCrossProcessLease(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)

	holder := helper(t, dir, "lease")
	stdout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Process.Kill() // in case of an early failure; a no-op after Wait
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "acquired\n" {
		t.Fatalf("holder said %q: %v", line, err)
	}
	want := "helper pid " + strconv.Itoa(holder.Process.Pid)

	// Another process is refused with the holder's name.
	out, err := helper(t, dir, "try-lease").Output()
	if err != nil || !strings.HasPrefix(string(out), "held: "+want+"\n") {
		t.Fatalf("second process: %q %v", out, err)
	}
	// And so is this one.
	_, err = s.AcquireLease(ctx, pool.LeaseRecord{Host: "me"})
	var held *pool.LeaseHeldError
	if !errors.As(err, &held) || held.Holder.String() != want || !strings.Contains(err.Error(), want) {
		t.Fatalf("acquire while held: %v", err)
	}
	if h, err := s.LeaseHolder(ctx); h.String() != want || err != nil {
		t.Fatalf("LeaseHolder = %q %v", h, err)
	}

	// kill -9: the kernel frees the lock; no stale lease remains.
	if err := holder.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	holder.Wait()
	if h, err := s.LeaseHolder(ctx); !h.IsZero() || err != nil {
		t.Fatalf("after kill: LeaseHolder = %q %v", h, err)
	}
	l, err := s.AcquireLease(ctx, pool.LeaseRecord{Host: "me"})
	if err != nil {
		t.Fatalf("acquire after kill: %v", err)
	}
	if h, _ := s.LeaseHolder(ctx); h.String() != "me" {
		t.Fatalf("holder %q", h)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
}
