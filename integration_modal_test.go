package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/modalx"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

// The binary against the fake Modal control plane (modalx/fakemodal), run in
// this process: the children reach it through MODAL_SERVER_URL and the token
// pair, and trust its sandboxes' certificates through SSL_CERT_FILE.
//
//	go test -race -run Modal .

// startModalFake is the chaos tests' name for testkit.FakeModal (until they
// adopt testkit).
func startModalFake(t *testing.T) *fakemodal.Server {
	t.Helper()
	return testkit.FakeModal(t, fakemodal.Options{})
}

// modalEnv is a child's environment: none of the caller's SANDBOXPOOL_,
// MODAL_ or certificate settings, an empty HOME (no ~/.modal.toml), the
// state dir, then extra (f.Env() for the fake; later entries win).
func modalEnv(t *testing.T, state string, extra ...string) []string {
	t.Helper()
	env := slices.DeleteFunc(cliEnv(state), func(kv string) bool {
		return slices.ContainsFunc([]string{"MODAL_", "HOME=", "SSL_CERT_FILE=", "SSL_CERT_DIR="},
			func(p string) bool { return strings.HasPrefix(kv, p) })
	})
	env = append(env, "HOME="+t.TempDir())
	return append(env, extra...)
}

// runningOf returns the ids of the pool's sandboxes that the fake runs.
func runningOf(f *fakemodal.Server, poolName string) []string {
	var ids []string
	for _, sb := range f.Sandboxes() {
		if sb.Running && sb.Tags[modalx.TagPool] == poolName {
			ids = append(ids, sb.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

func inView(v httpapi.PoolView, id string) bool {
	return slices.ContainsFunc(v.Sandboxes, func(s httpapi.SandboxView) bool { return s.ID == id })
}

func countViewState(v httpapi.PoolView, state pool.State) int {
	n := 0
	for _, s := range v.Sandboxes {
		if s.State == state {
			n++
		}
	}
	return n
}

var apiAddrRE = regexp.MustCompile(`api=(http://[0-9.]+:[0-9]+)`)

// started waits until a `run` logs that it is up (true) or exits (false).
func started(t *testing.T, c *controller) bool {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for !strings.Contains(c.logs.String(), "controller started") {
		select {
		case <-c.done:
			return false
		case <-deadline:
			t.Fatalf("run neither started nor exited; logs:\n%s", c.logs.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return true
}

// TestModalEndToEnd runs the binary as a user would, on the Modal backend:
// fill, claim from another process, a dead server replaced, kill -9 of the
// controller and restart (adoption, no extra sandbox), terminate --all.
func TestModalEndToEnd(t *testing.T) {
	f := testkit.FakeModal(t, fakemodal.Options{})
	state := t.TempDir()
	// The pool's timing is every process's configuration, not the pool's:
	// check and claim must use the controller's --use-duration (from the
	// environment here), or a sandbox with 60s left is "expiring" to them.
	env := modalEnv(t, state, append(f.Env(), "SANDBOXPOOL_TTL=60s", "SANDBOXPOOL_USE_DURATION=10s")...)
	flags := []string{"--backend", "modal", "--pool", "e2e"}
	runArgs := append(slices.Clone(flags), "--size", "2", "--ttl", "60s", "--use-duration", "10s",
		"--health-every", "1s", "--maintain-every", "2s", "--listen", "127.0.0.1:0", "--state-dir", state)
	view := func() httpapi.PoolView { return check(t, env, flags...) }

	ctl := startRun(t, env, runArgs...)
	if !started(t, ctl) {
		t.Fatalf("run exited; logs:\n%s", ctl.logs.String())
	}
	testkit.Eventually(t, 30*time.Second, "2 ready", func() bool { return len(readyIDs(view())) == 2 })
	for _, s := range view().Sandboxes {
		if !strings.HasPrefix(s.URL, "https://") || !s.Health.OK || s.SecondsLeft < 40 || s.SecondsLeft > 60 {
			t.Fatalf("sandbox %+v: want an https tunnel, healthy, about 60s left", s)
		}
	}

	// A second controller on the pool refuses, naming the holder.
	if r := cli(t, env, append([]string{"run"}, runArgs...)...); r.code != 1 || !strings.Contains(r.stderr, "maintained by pid") {
		t.Fatalf("second run: exit %d, %q", r.code, r.stderr)
	}

	// Claim from another process: an https tunnel that answers.
	r := cli(t, env, append([]string{"claim", "--json"}, flags...)...)
	if r.code != 0 {
		t.Fatalf("claim: exit %d: %s", r.code, r.stderr)
	}
	var claim httpapi.ClaimView
	if err := json.Unmarshal([]byte(r.stdout), &claim); err != nil {
		t.Fatalf("claim --json: %v\n%s", err, r.stdout)
	}
	if !strings.HasPrefix(claim.URL, "https://") || claim.SecondsLeft < 40 {
		t.Fatalf("claim %+v: want an https URL with about 60s left", claim)
	}
	resp, err := f.HTTPClient().Get(claim.URL)
	if err != nil {
		t.Fatalf("GET the claimed sandbox: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "Directory listing") || resp.Header.Get("X-Sandbox-Id") != claim.ID {
		t.Fatalf("GET %s: %d %s %q", claim.URL, resp.StatusCode, resp.Header.Get("X-Sandbox-Id"), body)
	}
	testkit.Eventually(t, 20*time.Second, "the backfill", func() bool {
		v := view()
		return len(readyIDs(v)) == 2 && countViewState(v, pool.StateClaimed) == 1 && !slices.Contains(readyIDs(v), claim.ID)
	})

	// A sandbox whose server dies is dropped, terminated and replaced.
	victim := readyIDs(view())[0]
	if !f.KillServer(victim) {
		t.Fatalf("the fake knows no %s", victim)
	}
	testkit.Eventually(t, 20*time.Second, "the dead server replaced", func() bool {
		v := view()
		return len(readyIDs(v)) == 2 && !inView(v, victim) && !slices.Contains(runningOf(f, "e2e"), victim)
	})

	// kill -9 of the controller; the restarted one adopts the pool. The
	// dead one's lease heartbeat stays live for 3 beats of 5s: a `run`
	// started now (its holder is a process of this host that is gone) waits
	// for it to lapse and takes the pool over, rather than refuse it.
	before := slices.Sorted(slices.Values(readyIDs(view())))
	ctl.kill()
	ctl2 := startRun(t, env, runArgs...)
	if !started(t, ctl2) {
		t.Fatalf("the restart after kill -9 refused the pool:\n%s", ctl2.logs.String())
	}
	testkit.Eventually(t, 40*time.Second, "the restarted controller maintaining the pool", func() bool {
		return strings.Contains(ctl2.logs.String(), "maintaining the pool")
	})
	if want := fmt.Sprintf("the pool's controller, pid %d on this host, is gone (killed or crashed): taking the pool over once its lease lapses", ctl.cmd.Process.Pid); !strings.Contains(ctl2.logs.String(), want) {
		t.Errorf("restarted controller's log lacks %q:\n%s", want, ctl2.logs.String())
	}
	m := apiAddrRE.FindStringSubmatch(ctl2.logs.String())
	if m == nil {
		t.Fatalf("no API address in the logs:\n%s", ctl2.logs.String())
	}
	api := &httpapi.Client{BaseURL: m[1]}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 2 { // passes of the restarted controller, now
		if _, err := api.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
	}
	v := view()
	if after := slices.Sorted(slices.Values(readyIDs(v))); !slices.Equal(after, before) {
		t.Fatalf("ready after restart %v, want the same %v\nkilled controller:\n%s\nrestarted:\n%s", after, before, ctl.logs.String(), ctl2.logs.String())
	}
	if want := slices.Sorted(slices.Values(append(slices.Clone(before), claim.ID))); !slices.Equal(runningOf(f, "e2e"), want) {
		t.Fatalf("the fake runs %v, want the 2 pooled and the claimed %v", runningOf(f, "e2e"), want)
	}

	// terminate --all: nothing left running, and the controller does not refill.
	r = cli(t, env, append([]string{"terminate", "--all"}, flags...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "terminated 3 sandboxes") {
		t.Fatalf("terminate --all: exit %d: %q %q", r.code, r.stdout, r.stderr)
	}
	if _, err := api.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	for _, sb := range f.Sandboxes() {
		if sb.Running {
			t.Errorf("sandbox %s still running after terminate --all", sb.ID)
		}
	}
	if d := ctl2.stop(t); d > 2*time.Second {
		t.Errorf("run took %s to stop on SIGTERM, want under 2s", d)
	}
}

// TestModalErrors: each Modal failure is one line on stderr that says what
// is wrong, exit 1, and never the token secret.
func TestModalErrors(t *testing.T) {
	f := testkit.FakeModal(t, fakemodal.Options{})
	state := t.TempDir()
	closed := "http://" + testkit.FreeAddr(t)
	for _, tc := range []struct {
		name  string
		env   []string
		setup func(t *testing.T)
		args  []string
		want  string
	}{
		{"NoCredentials", modalEnv(t, state), nil,
			[]string{"check"}, "no Modal credentials: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"},
		{"WrongToken", modalEnv(t, state, f.Env()...), func(t *testing.T) { f.RejectTokens(true); t.Cleanup(func() { f.RejectTokens(false) }) },
			[]string{"check"}, "Modal rejected the token " + f.TokenID},
		{"Unreachable", modalEnv(t, state, append(f.Env(), "MODAL_SERVER_URL="+closed)...), nil,
			[]string{"check"}, "cannot reach the Modal server at " + closed},
		{"ImageBuildFails", modalEnv(t, state, f.Env()...), func(t *testing.T) {
			f.FailImageBuilds("manifest for python:3.11-slim not found")
			t.Cleanup(func() { f.FailImageBuilds("") })
		}, []string{"maintain", "--size", "1", "--pool", "image"}, "building image python:3.11-slim: the build failed"},
		{"CreateRefused", modalEnv(t, state, f.Env()...), func(t *testing.T) { f.FailCreates(100, ""); t.Cleanup(func() { f.FailCreates(0, "") }) },
			[]string{"maintain", "--size", "1", "--pool", "quota"}, "refused by Modal (quota or limit reached): Workspace has reached its limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup(t)
			}
			start := time.Now()
			r := cli(t, tc.env, append(tc.args, "--backend", "modal")...)
			took := time.Since(start)
			line := strings.TrimRight(r.stderr, "\n")
			t.Logf("exit %d after %s: %s", r.code, took.Round(time.Millisecond), line)
			if r.code != 1 {
				t.Errorf("exit %d, want 1", r.code)
			}
			if strings.Contains(line, "\n") || !strings.HasPrefix(line, "sandboxpool: ") {
				t.Errorf("stderr is not one line:\n%s", r.stderr)
			}
			if !strings.Contains(line, tc.want) {
				t.Errorf("stderr %q does not say %q", line, tc.want)
			}
			if strings.Contains(r.stdout+r.stderr, f.TokenSecret) {
				t.Errorf("the token secret was printed")
			}
		})
	}
	if n := len(runningOf(f, "quota")) + len(runningOf(f, "image")); n != 0 {
		t.Errorf("%d sandboxes left running by failed creations", n)
	}
}

// TestModalOutage is issue 13 case 3 on the built binary: the control plane
// goes away (longer than the lease's staleness: heartbeats of 300ms here)
// and comes back without the pool's queue. The controller keeps running,
// says what is wrong while it lasts, keeps its lease, rebuilds the queue
// from the sandboxes' tags and serves claims again; nothing leaks and the
// pool is not refilled twice. SANDBOXPOOL_OUTAGE sets the outage (default
// 4s; the is 30s).
func TestModalOutage(t *testing.T) {
	outage := 4 * time.Second
	if s := os.Getenv("SANDBOXPOOL_OUTAGE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("SANDBOXPOOL_OUTAGE=%q: %v", s, err)
		}
		outage = d
	}
	f := testkit.FakeModal(t, fakemodal.Options{})
	state := t.TempDir()
	env := modalEnv(t, state, append(f.Env(), "SANDBOXPOOL_TTL=300s", "SANDBOXPOOL_USE_DURATION=10s",
		modalx.LeaseHeartbeatEnv+"=300ms")...)
	flags := []string{"--backend", "modal", "--pool", "outage"}
	ctl := startRun(t, env, append(slices.Clone(flags), "--size", "3", "--health-every", "1s", "--maintain-every", "1s",
		"--listen", "127.0.0.1:0", "--state-dir", state)...)
	if !started(t, ctl) {
		t.Fatalf("run exited; logs:\n%s", ctl.logs.String())
	}
	m := apiAddrRE.FindStringSubmatch(ctl.logs.String())
	if m == nil {
		t.Fatalf("no API address in the logs:\n%s", ctl.logs.String())
	}
	api := &httpapi.Client{BaseURL: m[1]}
	pool3 := func() (httpapi.PoolView, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return api.Pool(ctx)
	}
	healthz := func() (int, string) {
		cl := http.Client{Timeout: 3 * time.Second}
		resp, err := cl.Get(m[1] + "/healthz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	testkit.Eventually(t, 30*time.Second, "3 ready", func() bool { v, err := pool3(); return err == nil && v.Counts.Ready == 3 })
	before := runningOf(f, "outage")

	f.Stop()
	down := time.Now()
	sawError := ""
	for time.Since(down) < outage {
		select {
		case <-ctl.done:
			t.Fatalf("the controller exited during the outage:\n%s", ctl.logs.String())
		case <-time.After(200 * time.Millisecond):
		}
		if code, body := healthz(); code == http.StatusServiceUnavailable && sawError == "" {
			sawError = body
		}
	}
	if sawError == "" {
		t.Errorf("/healthz never said what was wrong during a %s outage", outage)
	}
	t.Logf("during the outage: %q", sawError)
	if err := f.Restart(true); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	testkit.Eventually(t, 30*time.Second, "the pool back at 3 ready, healthy", func() bool {
		v, err := pool3()
		code, _ := healthz()
		return err == nil && v.Counts.Ready == 3 && code == http.StatusOK
	})
	t.Logf("back %s after the control plane returned", time.Since(back).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	claim, err := api.Claim(ctx, true, 10*time.Second)
	if err != nil {
		t.Fatalf("claim after the outage: %v", err)
	}
	if !slices.Contains(before, claim.ID) {
		t.Errorf("claimed %s, not one of the sandboxes from before the outage %v\n%s", claim.ID, before, ctl.logs.String())
	}
	testkit.Eventually(t, 30*time.Second, "the backfill", func() bool {
		v, err := pool3()
		return err == nil && v.Counts.Ready == 3 && v.Counts.Claimed == 1
	})
	// Nothing leaked, nothing created twice: the 3 from before (one of them
	// claimed) and one backfill.
	v, _ := pool3()
	known := map[string]bool{}
	for _, s := range v.Sandboxes {
		known[s.ID] = true
	}
	running := runningOf(f, "outage")
	for _, id := range running {
		if !known[id] {
			t.Errorf("%s runs, unknown to the controller", id)
		}
	}
	if len(running) != 4 {
		t.Errorf("%d sandboxes run, want 4 (3 from before, one backfill): %v", len(running), running)
	}
	// It kept the lease: a second controller is refused, naming it.
	if r := cli(t, env, append([]string{"run", "--listen", ""}, flags...)...); r.code != 1 || !strings.Contains(r.stderr, "already maintained by") {
		t.Errorf("second run after the outage: exit %d, %q", r.code, r.stderr)
	}
	if logs := ctl.logs.String(); strings.Contains(logs, "lost the controller lease") {
		t.Errorf("the controller lost its lease:\n%s", logs)
	}
	ctl.stop(t)
}
