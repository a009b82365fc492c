package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/modalx"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
)

// TestWorkloadIsThePools: a pool's --cmd is stored with it, so a process
// that takes the pool over or backfills it creates the sandboxes its
// controller was asked for: after `run --cmd W` is killed, a claim's
// backfill made built-in servers (a directory listing) instead of W.
// Another --cmd given while the pool runs W is refused (exit 2), by a
// viewer dashboard as by a claim, naming the pool's.
func TestWorkloadIsThePools(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	t.Cleanup(func() { tearDown(t, env) })
	w := workloadCmd(t, "")
	ctl := startRun(t, env, "--size", "1", "--cmd", w, "--listen", "", "--maintain-every", "1s")
	testkit.Eventually(t, 30*time.Second, "1 ready", func() bool { return len(readyIDs(check(t, env))) == 1 })

	other := "exec sleep 1000"
	r := cli(t, cliEnv(state, "TERM=dumb"), "dashboard", "--listen", "", "--cmd", other)
	if r.code != 2 || !strings.Contains(r.stderr, "--cmd given: pool \"default\" runs --cmd ") || !strings.Contains(r.stderr, "maintained by pid ") {
		t.Errorf("a viewer given another --cmd: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}

	ctl.kill() // kill -9: no controller is left
	r = cli(t, env, "claim")
	if r.code != 0 {
		t.Fatalf("claim: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if got := getBody(t, strings.TrimSpace(r.stdout)); got != "hostile workload\n" {
		t.Fatalf("the claimed sandbox answers %q, want the --cmd workload's", got)
	}
	// The claim waited for its backfill: the new sandbox runs W too.
	v := check(t, env)
	ready := readyIDs(v)
	if len(ready) != 1 {
		t.Fatalf("after the claim's backfill: %d ready, want 1", len(ready))
	}
	for _, s := range v.Sandboxes {
		if s.ID == ready[0] {
			if got := getBody(t, s.URL); got != "hostile workload\n" {
				t.Errorf("the backfilled sandbox answers %q, want the pool's --cmd workload's, not a built-in server's", got)
			}
		}
	}

	r = cli(t, env, "claim", "--cmd", other)
	if r.code != 2 || !strings.Contains(r.stderr, "(as stored by its controller), not --cmd \"exec sleep 1000\"") {
		t.Errorf("a claim given another --cmd: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if n := len(readyIDs(check(t, env))); n != 1 {
		t.Errorf("the refused claim changed the pool: %d ready", n)
	}
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestModalWorkloadIsThePools is TestWorkloadIsThePools on Modal: after
// `run --cmd W --port P` is killed, the process that refills the pool
// creates W on P (the queue's settings hold it), not python -m http.server
// 8080.
func TestModalWorkloadIsThePools(t *testing.T) {
	f := testkit.FakeModal(t, fakemodal.Options{})
	state := t.TempDir()
	env := modalEnv(t, state, append(f.Env(), modalx.LeaseHeartbeatEnv+"=200ms")...)
	flags := []string{"--backend", "modal", "--pool", "wl"}
	const w = "python3 -m http.server {port} --bind 0.0.0.0"
	ctl := startRun(t, env, append(flags, "--size", "1", "--cmd", w, "--port", "9000", "--listen", "", "--maintain-every", "1s")...)
	testkit.Eventually(t, 30*time.Second, "1 ready", func() bool { return len(readyIDs(check(t, env, flags...))) == 1 })
	ctl.kill()
	testkit.Eventually(t, 30*time.Second, "the killed controller's lease gone stale", func() bool {
		return check(t, env, flags...).MaintainedBy == nil
	})
	if r := cli(t, env, append([]string{"claim"}, flags...)...); r.code != 0 {
		t.Fatalf("claim: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	// A process that takes the pool over refills it: with the pool's workload.
	if r := cli(t, env, append([]string{"maintain"}, flags...)...); r.code != 0 {
		t.Fatalf("maintain: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	made := 0
	for _, sb := range f.Sandboxes() {
		if sb.Tags[modalx.TagPool] != "wl" {
			continue
		}
		made++
		if got := strings.Join(sb.Command, " "); got != "sh -c python3 -m http.server 9000 --bind 0.0.0.0" && got != "python3 -m http.server 9000 --bind 0.0.0.0" {
			t.Errorf("sandbox %s runs %q, want the pool's --cmd on its --port", sb.ID, got)
		}
	}
	if made != 2 {
		t.Errorf("%d sandboxes made, want the run's and the backfill's", made)
	}
	r := cli(t, env, append([]string{"claim", "--port", "8080"}, flags...)...)
	if r.code != 2 || !strings.Contains(r.stderr, "--port given: pool \"wl\" runs --image python:3.11-slim --cmd ") {
		t.Errorf("a claim given another --port: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	cli(t, env, append([]string{"terminate", "--all"}, flags...)...)
}
