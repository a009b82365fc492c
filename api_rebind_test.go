package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
)

func getStatus(url string) int {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Issue 10 case 3: after a viewer dashboard takes over the lease, it binds
// the API as soon as the port is free, and says why it is off until then.
func TestViewerBindsTheAPIWhenThePortFrees(t *testing.T) {
	state := t.TempDir()
	addr := testkit.FreeAddr(t)
	opts := func() *options {
		return &options{backend: "local", stateDir: state, listen: addr, port: 8080, logLevel: "info"}
	}
	cfg := pool.DefaultConfig()
	cfg.Size = 1
	logger := slog.New(slog.DiscardHandler)
	ctx := context.Background()

	first, err := startController(ctx, opts(), cfg, logger, false)
	if err != nil {
		t.Fatal(err)
	}
	second, err := startController(ctx, opts(), cfg, logger, true)
	if err != nil {
		first.stop(true, logger)
		t.Fatalf("a second dashboard refused: %v", err)
	}
	defer second.stop(true, logger)
	if st := second.APIStatus(); !strings.Contains(st, "in use") || !strings.Contains(st, "retrying") {
		first.stop(true, logger)
		t.Fatalf("viewer's API status %q: want off, in use, retrying", st)
	}
	first.stop(false, logger) // the first dashboard quits; the viewer takes over

	testkit.Eventually(t, 15*time.Second, "the viewer to serve the API", func() bool { return second.APIStatus() == addr })
	if code := getStatus("http://" + addr + "/v1/pool"); code != http.StatusOK {
		t.Fatalf("GET /v1/pool on the new controller: %d", code)
	}
	testkit.Eventually(t, 15*time.Second, "the viewer to take the lease", func() bool { return second.ctrl.Snapshot().Role == "controller" })
}

// A dashboard whose port is taken by another program binds it once freed.
func TestDashboardBindsTheAPIWhenAnotherProgramFreesIt(t *testing.T) {
	state := t.TempDir()
	squatter, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := squatter.Addr().String()
	o := &options{backend: "local", stateDir: state, listen: addr, port: 8080, logLevel: "info"}
	cfg := pool.DefaultConfig()
	cfg.Size = 0
	logger := slog.New(slog.DiscardHandler)
	s, err := startController(context.Background(), o, cfg, logger, true)
	if err != nil {
		squatter.Close()
		t.Fatal(err)
	}
	defer s.stop(true, logger)
	if st := s.APIStatus(); !strings.Contains(st, addr+" in use") {
		t.Errorf("status %q: want it to say %s is in use", st, addr)
	}
	squatter.Close()
	testkit.Eventually(t, 10*time.Second, "the API bound", func() bool { return s.APIStatus() == addr })
	if code := getStatus("http://" + addr + "/healthz"); code != http.StatusOK {
		t.Fatalf("GET /healthz: %d", code)
	}
}

// Issue 13 case 8: a command that only reads or removes, on a pool that does
// not exist, says so, exits 1 and creates nothing (no store, no agent, no
// state dir).
func TestCheckUnknownPool(t *testing.T) {
	state := t.TempDir() + "/state" // not there yet either
	env := cliEnv(state)
	for _, args := range [][]string{{"check", "--pool", "typo"}, {"check", "--json", "--pool", "typo"},
		{"terminate", "--all", "--pool", "typo"}, {"terminate", "sb-0123456789ab", "--pool", "typo"}} {
		r := cli(t, env, args...)
		if r.code != 1 || !strings.Contains(r.stderr, `pool "typo" does not exist`) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Fatalf("%v: exit %d, %q: want exit 1 and one line saying the pool does not exist", args, r.code, r.stderr)
		}
		if r.stdout != "" {
			t.Errorf("%v printed %q", args, r.stdout)
		}
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(state)
		t.Fatalf("check of an unknown pool created %s: %v", state, entries)
	}
	// Once the pool exists, check names it; an unknown one lists the known.
	if r := cli(t, env, "maintain", "--size", "1", "--pool", "real"); r.code != 0 {
		t.Fatalf("maintain: %d %s", r.code, r.stderr)
	}
	r := cli(t, env, "check", "--json", "--pool", "real")
	var view struct{ Sandboxes []struct{ URL string } }
	if err := json.Unmarshal([]byte(r.stdout), &view); err != nil || len(view.Sandboxes) != 1 {
		t.Fatalf("check --json: %v %q", err, r.stdout)
	}
	// A pool whose store was lost still has its agent's sandboxes:
	// terminate --all finds and ends them.
	if err := os.Remove(filepath.Join(state, "real.json")); err != nil {
		t.Fatal(err)
	}
	if r := cli(t, env, "terminate", "--all", "--pool", "real"); r.code != 0 || !strings.Contains(r.stdout, "terminated 1 sandboxes") {
		t.Fatalf("terminate --all after the store was lost: %d %q %s", r.code, r.stdout, r.stderr)
	}
	if resp, err := http.Get(view.Sandboxes[0].URL); err == nil {
		resp.Body.Close()
		t.Fatalf("%s still answers after terminate --all", view.Sandboxes[0].URL)
	}
	if r := cli(t, env, "check", "--pool", "real"); r.code != 0 || !strings.Contains(r.stdout, "target 0") {
		t.Fatalf("check of a pool torn down: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := cli(t, env, "check", "--pool", "rael"); r.code != 1 || !strings.Contains(r.stderr, "pools there: real") {
		t.Fatalf("check of a typo: exit %d %q", r.code, r.stderr)
	}
}

// TestCheckUnknownModalPool is TestCheckUnknownPool on the Modal backend (issue
// 13 case 8): a typo in --pool says the pool does not exist, exits 1 and
// creates nothing: no app, no queue, no sandbox.
func TestCheckUnknownModalPool(t *testing.T) {
	f := startModalFake(t)
	env := modalEnv(t, t.TempDir(), append(f.Env(), "SANDBOXPOOL_BACKEND=modal")...)
	unknown := func(want string) {
		t.Helper()
		for _, args := range [][]string{{"check", "--pool", "typo"}, {"check", "--json", "--pool", "typo"}} {
			r := cli(t, env, args...)
			if r.code != 1 || !strings.Contains(r.stderr, `pool "typo" does not exist`) || !strings.Contains(r.stderr, want) ||
				strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
				t.Fatalf("%v: exit %d, %q: want exit 1 and one line saying the pool does not exist (%s)", args, r.code, r.stderr, want)
			}
			if r.stdout != "" {
				t.Errorf("%v printed %q", args, r.stdout)
			}
		}
	}
	unknown("no app")
	if objs := f.Objects(); len(objs) != 0 || len(f.Sandboxes()) != 0 {
		t.Fatalf("check of an unknown pool created %v and %d sandboxes", objs, len(f.Sandboxes()))
	}
	// Once another pool exists (its app too), check names that one; the typo
	// still creates nothing.
	if r := cli(t, env, "terminate", "--all", "--pool", "real"); r.code != 0 {
		t.Fatalf("terminate --all: %d %s", r.code, r.stderr)
	}
	if r := cli(t, env, "check", "--pool", "real"); r.code != 0 || !strings.Contains(r.stdout, "target 0") {
		t.Fatalf("check of a pool torn down: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	before := f.Objects()
	unknown(`no queue "sandboxpool-typo"`)
	if after := f.Objects(); !slices.Equal(before, after) || len(f.Sandboxes()) != 0 {
		t.Fatalf("check of an unknown pool created objects: %v, then %v", before, after)
	}
}
