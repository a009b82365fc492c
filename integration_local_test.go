package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
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
	"github.com/sandboxpool/sandboxpool/pool/filestore"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
	"github.com/sandboxpool/sandboxpool/pool/local"
)

// fastRun are the flags of a controller that notices things within seconds.
var fastRun = []string{"--health-every", "500ms", "--maintain-every", "2s", "--health-timeout", "3s", "--listen", ""}

func localBackend(t *testing.T, stateDir, poolName string) *local.Backend {
	t.Helper()
	b, err := local.New(local.Options{Pool: poolName, StateDir: stateDir})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// alive and get are the chaos tests' names for testkit.Alive and
// testkit.Get (until they adopt testkit).
func alive(pid int) bool { return testkit.Alive(pid) }

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	return testkit.Get(t, nil, url)
}

func containsRef(refs []pool.Ref, id string) bool {
	return slices.ContainsFunc(refs, func(r pool.Ref) bool { return r.ID == id })
}

// TestLocalEndToEnd is the engine issue's "done when", as a user does it.
func TestLocalEndToEnd(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	be := localBackend(t, state, "default")
	t.Cleanup(func() { tearDown(t, env) })

	ctl := startRun(t, env, append([]string{"--size", "3"}, fastRun...)...)
	testkit.Eventually(t, 30*time.Second, "3 ready", func() bool { return len(readyIDs(check(t, env))) == 3 })
	v := check(t, env)
	for _, s := range v.Sandboxes {
		if s.SecondsLeft < 200 || !s.Health.OK {
			t.Fatalf("sandbox %+v: want ~300s left and healthy", s)
		}
	}

	// A second controller on the same pool refuses, naming the holder.
	if r := cli(t, env, append([]string{"run"}, fastRun...)...); r.code != 1 || !strings.Contains(r.stderr, "maintained by pid") {
		t.Fatalf("second run: exit %d, %q", r.code, r.stderr)
	}

	// Claim from another process; the URL answers with a directory listing.
	r := cli(t, env, "claim", "--json")
	if r.code != 0 {
		t.Fatalf("claim: exit %d: %s", r.code, r.stderr)
	}
	var claim httpapi.ClaimView
	if err := json.Unmarshal([]byte(r.stdout), &claim); err != nil {
		t.Fatal(err)
	}
	if code, body := testkit.Get(t, nil, claim.URL); code != 200 || !strings.Contains(body, "README.txt") {
		t.Fatalf("GET claimed %s: %d %q", claim.URL, code, body)
	}
	testkit.Eventually(t, 30*time.Second, "backfill to 3 ready", func() bool { return len(readyIDs(check(t, env))) == 3 })

	// A sandbox that dies (its server gone, as in a crash) is found and replaced.
	victim := readyIDs(check(t, env))[0]
	if err := be.Kill(context.Background(), victim); err != nil {
		t.Fatalf("kill %s: %v", victim, err)
	}
	testkit.Eventually(t, 30*time.Second, "the killed sandbox replaced", func() bool {
		ids := readyIDs(check(t, env))
		return len(ids) == 3 && !slices.Contains(ids, victim)
	})

	// kill -9 of the controller, then a restart, re-adopts the same sandboxes.
	before := readyIDs(check(t, env))
	ctl.kill()
	addr := testkit.FreeAddr(t)
	ctl = startRun(t, env, slices.Concat(fastRun, []string{"--listen", addr})...)
	a := api{t: t, base: "http://" + addr}
	testkit.Eventually(t, 30*time.Second, "the restarted controller's API", func() bool { return a.ready() >= 0 })
	a.passes(2) // then nothing may have changed
	after := readyIDs(check(t, env))
	slices.Sort(before)
	slices.Sort(after)
	if !slices.Equal(before, after) {
		t.Fatalf("after a restart the pool is %v, want the same %v\nlogs:\n%s", after, before, ctl.logs.String())
	}
	refs, _ := be.List(context.Background())
	if len(refs) != 4 { // 3 pooled + 1 claimed: nothing leaked, nothing lost
		t.Fatalf("%d sandboxes running, want 4 (3 ready, 1 claimed)", len(refs))
	}

	// A clean stop within 2 s, leaving the sandboxes running.
	if took := ctl.stop(t); took > 2*time.Second {
		t.Fatalf("run took %s to stop, want within 2s", took)
	}
	if n := len(readyIDs(check(t, env))); n != 3 {
		t.Fatalf("%d ready after stop, want 3 left running", n)
	}

	// terminate --all leaves no process of the pool alive, claimed one
	// included: the agent that ran them goes too.
	agent, err := be.AgentPid(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	urls := []string{claim.URL}
	for _, s := range check(t, env).Sandboxes {
		urls = append(urls, s.URL)
	}
	if r := cli(t, env, "terminate", "--all"); r.code != 0 || !strings.Contains(r.stdout, "terminated 4") {
		t.Fatalf("terminate --all: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	testkit.Eventually(t, 10*time.Second, "the agent gone", func() bool { return !testkit.Alive(agent) })
	for _, u := range urls {
		if _, err := http.Get(u); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("GET %s after terminate --all: %v, want refused", u, err)
		}
	}
	if v := check(t, env); v.Target != 0 || len(v.Sandboxes) != 0 {
		t.Fatalf("after terminate --all: target %d, %d sandboxes", v.Target, len(v.Sandboxes))
	}
}

func TestLocalShortTTLIsReplaced(t *testing.T) {
	state := t.TempDir()
	// The controller stores its timing with the pool: check and claim judge
	// "good" alike without being told.
	env := cliEnv(state)
	t.Cleanup(func() { tearDown(t, env) })
	startRun(t, env, append([]string{"--size", "1", "--ttl", "3s", "--use-duration", "1s"}, fastRun...)...)
	var first string
	testkit.Eventually(t, 30*time.Second, "1 ready", func() bool {
		ids := readyIDs(check(t, env))
		if len(ids) == 1 {
			first = ids[0]
		}
		return first != ""
	})
	testkit.Eventually(t, 30*time.Second, "the first sandbox replaced before it expires", func() bool {
		ids := readyIDs(check(t, env))
		return len(ids) >= 1 && !slices.Contains(ids, first)
	})
	be := localBackend(t, state, "default")
	testkit.Eventually(t, 10*time.Second, "the expired sandbox gone", func() bool {
		refs, _ := be.List(context.Background())
		return !containsRef(refs, first)
	})
}

// TestCrossProcessClaims: 4 processes claiming from one pool at once never
// get the same sandbox twice.
func TestCrossProcessClaims(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	t.Cleanup(func() { tearDown(t, env) })
	if r := cli(t, env, "maintain", "--size", "12"); r.code != 0 {
		t.Fatalf("maintain: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	// With no controller running, a claimer that finds the lease free
	// backfills itself; the others claim straight from the store.
	var mu sync.Mutex
	var got []string
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				r := cli(t, env, "claim", "--json", "--timeout", "5s")
				if r.code != 0 {
					t.Errorf("claim: exit %d: %s", r.code, r.stderr)
					return
				}
				var c httpapi.ClaimView
				if err := json.Unmarshal([]byte(r.stdout), &c); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got = append(got, c.ID)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(got)
	if len(got) != 12 || len(slices.Compact(slices.Clone(got))) != 12 {
		t.Fatalf("claims got %v: want 12 distinct sandboxes", got)
	}
	if r := cli(t, env, "terminate", "--all"); r.code != 0 {
		t.Fatalf("terminate --all: %s", r.stderr)
	}
	if r := cli(t, env, "claim", "--timeout", "1s"); r.code != 1 || !strings.Contains(r.stderr, "no good sandbox") {
		t.Fatalf("claim from an empty pool: exit %d %q", r.code, r.stderr)
	}
}

func TestBadInputExits2AndChangesNothing(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	for _, tc := range []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"run", "--ttl", "soon"}, nil, "--ttl"},
		{[]string{"run", "--size", "-1"}, nil, "--size"},
		{[]string{"run", "--size", "101"}, nil, "--size"},
		{[]string{"run", "--size", "5", "--max-size", "4"}, nil, "--size"},
		{[]string{"run", "--use-duration", "6m"}, nil, "--use-duration"},
		{[]string{"run", "--health-every", "0s"}, nil, "--health-every"},
		{[]string{"run", "--max-creating", "0"}, nil, "--max-creating"},
		{[]string{"run", "--backend", "cloud"}, nil, "--backend"},
		{[]string{"run", "--pool", "../etc"}, nil, "--pool"},
		{[]string{"run", "--listen", "0.0.0.0:7780"}, nil, "--listen"},
		{[]string{"run", "--listen", "nonsense"}, nil, "--listen"},
		{[]string{"claim", "--timeout", "-1s"}, nil, "--timeout"},
		{[]string{"check", "--nope"}, nil, "unknown flag"},
		{[]string{"terminate"}, nil, "--all"},
		{[]string{"check"}, []string{"SANDBOXPOOL_TTL=forever"}, "SANDBOXPOOL_TTL"},
		{[]string{"maintain"}, []string{"SANDBOXPOOL_SIZE=lots"}, "SANDBOXPOOL_SIZE"},
	} {
		t.Run(strings.Join(append(tc.env, tc.args...), " "), func(t *testing.T) {
			r := cli(t, append(slices.Clone(env), tc.env...), tc.args...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", r.code, r.stderr)
			}
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], tc.want) {
				t.Fatalf("stderr %q: want one line naming %s", r.stderr, tc.want)
			}
		})
	}
	// Nothing was started or written.
	entries, _ := os.ReadDir(state)
	if len(entries) != 0 {
		t.Fatalf("bad input left %d files in the state dir", len(entries))
	}
}

func TestCorruptStoreIsReportedAndUntouched(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	path := filepath.Join(state, "default.json")
	garbage := []byte(`{"version":1,"entries":[{"id":`)
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"check"}, {"claim", "--timeout", "1s"}, {"terminate", "--all"}} {
		r := cli(t, env, args...)
		if r.code != 1 || !strings.Contains(r.stderr, path) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Fatalf("%v: exit %d, stderr %q: want exit 1 and one line naming %s", args, r.code, r.stderr, path)
		}
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(after, garbage) {
		t.Fatalf("the corrupt store file was changed: %q", after)
	}
}

// TestRunWaitsForAClaimsBackfill: a `claim` that holds the lease for its own
// backfill does not make a starting controller refuse; it waits for it.
func TestRunWaitsForAClaimsBackfill(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	st, err := filestore.Open(state, "default")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	lease, err := st.AcquireLease(context.Background(), pool.LeaseRecord{Host: "elsewhere", Pid: 1, Role: pool.RoleBackfill})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tearDown(t, env) })
	ctl := startRun(t, env, append([]string{"--size", "1"}, fastRun...)...)
	testkit.Eventually(t, 10*time.Second, "the controller to say it waits", func() bool {
		return strings.Contains(ctl.logs.String(), "waiting for a claim's backfill")
	})
	if err := lease.Release(); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "the controller to start after the claim", func() bool {
		return strings.Contains(ctl.logs.String(), "controller started")
	})
	testkit.Eventually(t, 30*time.Second, "1 ready", func() bool { return len(readyIDs(check(t, env))) == 1 })
}

// TestRunHasTimerSlack: `run` runs with a 1 ms timer slack (the Go
// runtime's short sleeps while it is busy coalesce): it runs itself again
// in place at start, keeping its pid, and then maintains the pool as ever.
func TestRunHasTimerSlack(t *testing.T) {
	if _, err := os.Stat("/proc/self/timerslack_ns"); err != nil {
		t.Skip("no timer slack here:", err)
	}
	state := t.TempDir()
	env := cliEnv(state)
	t.Cleanup(func() { tearDown(t, env) })
	ctl := startRun(t, env, append([]string{"--size", "1"}, fastRun...)...)
	testkit.Eventually(t, 30*time.Second, "1 ready", func() bool { return len(readyIDs(check(t, env))) == 1 })
	pid := ctl.cmd.Process.Pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/timerslack_ns", pid))
	if err != nil || strings.TrimSpace(string(b)) != "1000000" {
		t.Fatalf("run's timer slack: %q (%v), want 1000000 ns", b, err)
	}
	want := fmt.Sprintf("maintained by pid %d", pid)
	if r := cli(t, env, append([]string{"run"}, fastRun...)...); r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Fatalf("second run: exit %d, %q; want %q", r.code, r.stderr, want)
	}
}
