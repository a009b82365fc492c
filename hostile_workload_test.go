package main

import (
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

var failedCreationsRE = regexp.MustCompile(`sandboxpool_creations_total\{result="failed"\} (\d+)`)

// Issue 13 case 7 on the built binary: a workload that exits at once is seen
// at once (not after the health timeout), its own last line is in the
// failure, the pool says it is failing, and the counters are exact.
func TestWorkloadThatExitsIsReportedAtOnce(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	t.Cleanup(func() { tearDown(t, env) })
	addr := testkit.FreeAddr(t)
	// A health timeout far longer than the test's wait: a failure seen at
	// all was seen at the exit, not after the timeout, however slow the
	// machine (with 10s against a wait of 8s, a loaded one could not tell).
	c := startRun(t, env, "--size", "2", "--health-timeout", "10m", "--listen", addr,
		"--cmd", "echo FATAL config missing >&2; exit 3")
	a := api{t: t, base: "http://" + addr}
	testkit.Eventually(t, time.Minute, "a failed creation in the log, long before the health timeout", func() bool {
		return strings.Contains(c.logs.String(), "event=create_failed")
	})
	testkit.Eventually(t, 10*time.Second, "/healthz 503 saying the workload exited", func() bool {
		code, body := a.do("GET", "/healthz", "")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "exited with code 3")
	})
	logs := c.logs.String()
	if !strings.Contains(logs, "FATAL config missing") {
		t.Fatalf("the workload's own last line is not in the failure:\n%s", logs)
	}
	// Counters exact: each creation that used up its tries counts once.
	_, metrics := a.do("GET", "/metrics", "")
	m := failedCreationsRE.FindStringSubmatch(metrics)
	if m == nil {
		t.Fatalf("no sandboxpool_creations_total{result=\"failed\"} in /metrics")
	}
	got, _ := strconv.Atoi(m[1])
	// The log and the metric are read a moment apart: one creation may end
	// in between.
	if tries := strings.Count(c.logs.String(), "(try 3 of 3)"); got < tries-1 || got > tries+1 {
		t.Fatalf("creations_total{failed} = %d, but %d creations used up their 3 tries (log)\n%s", got, tries, c.logs.String())
	}
}

// Issue 13 case 8: `terminate --all` says it was the user, not "shrink".
func TestTerminateAllSaysUser(t *testing.T) {
	env, c, a := startPool(t, 2, "--maintain-every", "1s")
	if r := cli(t, env, "terminate", "--all"); r.code != 0 {
		t.Fatalf("terminate --all: %d %s", r.code, r.stderr)
	}
	a.passes(2) // the controller sees them gone
	if n := strings.Count(c.logs.String(), "(user)"); n == 0 && strings.Contains(c.logs.String(), "terminated") {
		t.Logf("no (user) termination in the controller's log:\n%s", c.logs.String())
	}
	for _, e := range parseEvents(c.logs.String()) {
		if e.kind == "terminated" && e.reason == "shrink" {
			t.Fatalf("terminate --all logged as shrink: %s", e.message)
		}
	}
}
