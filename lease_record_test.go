package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

func TestCommandLineHidesTheToken(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"/x/sandboxpool", "run", "--token", "s3cret-0123456789", "--size", "3"}, "sandboxpool run --token *** --size 3"},
		{[]string{"sandboxpool", "run", "--token=s3cret-0123456789"}, "sandboxpool run --token=***"},
		{[]string{"sandboxpool", "run", "--token-file", "/run/tok", "--cmd", "python -m http.server {port}"}, `sandboxpool run --token-file /run/tok --cmd "python -m http.server {port}"`},
		{[]string{"sandboxpool"}, "sandboxpool"},
	} {
		if got := commandLine(tc.args); got != tc.want {
			t.Errorf("commandLine(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
	if got := commandLine([]string{"sandboxpool", "--cmd", strings.Repeat("x", 500)}); len([]rune(got)) != 200 || !strings.HasSuffix(got, "…") {
		t.Errorf("a long command line is %d runes: %q", len([]rune(got)), got)
	}
}

// TestLeaseRecordSaysCommandAndAPI: the controller's lease record names its
// command line (never the --token value) and the API address it bound, on
// both backends, so check (another process) says who maintains the pool
// and where its API is.
func TestLeaseRecordSaysCommandAndAPI(t *testing.T) {
	const secret = "s3cret-token-0123456789"
	for _, backend := range []string{"local", "modal"} {
		t.Run(backend, func(t *testing.T) {
			env := cliEnv(t.TempDir())
			if backend == "modal" {
				f := startModalFake(t)
				env = modalEnv(t, t.TempDir(), append(f.Env(), "SANDBOXPOOL_BACKEND=modal")...)
			}
			ctl := startRun(t, env, "--size", "0", "--listen", "127.0.0.1:0", "--token", secret)
			if !started(t, ctl) {
				t.Fatalf("run exited:\n%s", ctl.logs.String())
			}
			m := apiAddrRE.FindStringSubmatch(ctl.logs.String())
			if m == nil {
				t.Fatalf("no API address in the logs:\n%s", ctl.logs.String())
			}
			api := strings.TrimPrefix(m[1], "http://")
			var by pool.LeaseRecord
			testkit.Eventually(t, 20*time.Second, "check to name the controller's API", func() bool {
				r := cli(t, env, "check", "--json")
				var v httpapi.PoolView
				if r.code != 0 || json.Unmarshal([]byte(r.stdout), &v) != nil || v.MaintainedBy == nil {
					return false
				}
				by = *v.MaintainedBy
				return by.API == api
			})
			if by.Pid != ctl.cmd.Process.Pid || by.Role != pool.RoleController ||
				!strings.HasPrefix(by.Command, "sandboxpool run ") || !strings.Contains(by.Command, "--token ***") || strings.Contains(by.Command, secret) {
				t.Fatalf("lease record %+v: want pid %d, the command line without the token", by, ctl.cmd.Process.Pid)
			}
			r := cli(t, env, "check")
			if want := "maintained by pid " + strconv.Itoa(by.Pid) + " on "; !strings.Contains(r.stdout, want) || !strings.Contains(r.stdout, "(api "+api+")") ||
				strings.Contains(r.stdout, secret) {
				t.Fatalf("check says %q: want %q with the API and no token", r.stdout, want)
			}
			ctl.stop(t)
			if r := cli(t, env, "check"); !strings.Contains(r.stdout, "no controller maintains it") {
				t.Fatalf("check after the controller stopped: %q %q", r.stdout, r.stderr)
			}
		})
	}
}
