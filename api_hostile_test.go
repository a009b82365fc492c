package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

// startRunLimited starts `run` with its file descriptor limit lowered to
// nofile (soft and hard), as an SRE's systemd unit might.
func startRunLimited(t *testing.T, env []string, nofile int, args ...string) *controller {
	t.Helper()
	script := fmt.Sprintf(`ulimit -n %d && exec "$0" run "$@"`, nofile)
	return startProcess(t, env, exec.Command("sh", append([]string{"-c", script, binary}, args...)...))
}

var apiLine = regexp.MustCompile(`api=http://(\S+)`)

// apiAddr waits for the controller's "controller started" line and returns
// the API address it names.
func (c *controller) apiAddr(t *testing.T) string {
	t.Helper()
	var addr string
	testkit.Eventually(t, 30*time.Second, "the API address in the log", func() bool {
		if m := apiLine.FindStringSubmatch(c.logs.String()); m != nil {
			addr = m[1]
			return true
		}
		select {
		case <-c.done:
			t.Fatalf("controller exited:\n%s", c.logs.String())
		default:
		}
		return false
	})
	return addr
}

// TestIdleConnectionsCannotStarveTheController is issue 13 case 1 on the
// built binary: thousands of idle connections, some after one request, must
// not exhaust the controller's descriptors nor stop /healthz and claims.
func TestIdleConnectionsCannotStarveTheController(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	t.Cleanup(func() { tearDown(t, env) })
	ctl := startRunLimited(t, env, 1024, append([]string{"--size", "2", "--listen", "127.0.0.1:0"}, fastRun[:len(fastRun)-2]...)...)
	addr := ctl.apiAddr(t)
	base := "http://" + addr
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(method, path string) (int, string, error) {
		req, _ := http.NewRequest(method, base+path, nil)
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	testkit.Eventually(t, 30*time.Second, "2 ready", func() bool {
		_, body, err := get("GET", "/v1/pool")
		return err == nil && strings.Contains(body, `"ready":2`)
	})

	// 5,000 connections held open: half send nothing, half one request
	// (GET /healthz) then sit idle, as in the issue.
	const n = 5000
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	work := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: 3 * time.Second}
			for i := range work {
				c, err := d.DialContext(ctx, "tcp", addr)
				if err != nil {
					continue
				}
				if i%2 == 1 {
					_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if len(conns) < n/2 {
		t.Fatalf("only %d of %d connections opened", len(conns), n)
	}

	// With all of them still open: /healthz and a claim answer at once.
	start := time.Now()
	if code, body, err := get("GET", "/healthz"); err != nil || code != 200 {
		t.Fatalf("healthz under %d idle connections: %d %s %v", len(conns), code, body, err)
	}
	if code, body, err := get("POST", "/v1/claims?timeout=10s"); err != nil || code != 200 {
		t.Fatalf("claim under %d idle connections: %d %s %v", len(conns), code, body, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("healthz and a claim took %s under load", d)
	} else {
		t.Logf("%d connections held open: healthz and a claim answered in %s", len(conns), d.Round(time.Millisecond))
	}

	// The controller stayed within its descriptors and said what it did.
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", ctl.cmd.Process.Pid))
	if err == nil && len(fds) > 900 {
		t.Errorf("controller holds %d descriptors of its 1024", len(fds))
	}
	_, metrics, err := get("GET", "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^sandboxpool_api_idle_closed_total [1-9]`).MatchString(metrics) {
		t.Errorf("sandboxpool_api_idle_closed_total not counted:\n%s", grepLines(metrics, "sandboxpool_api_"))
	}
	if m := regexp.MustCompile(`(?m)^sandboxpool_api_connections_max (\d+)`).FindStringSubmatch(metrics); m == nil || m[1] != "256" {
		t.Errorf("sandboxpool_api_connections_max: %v, want 256 (a quarter of 1024)", m)
	}
	if logs := ctl.logs.String(); strings.Contains(logs, "too many open files") {
		t.Errorf("the controller ran out of descriptors:\n%s", logs)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Tokens: at least 16 characters, no whitespace, from a file or the env
// so that they stay out of ps (issue 13 case 4, issue 10 case 7).
func TestTokenRules(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	dir := t.TempDir()
	short := dir + "/short"
	if err := os.WriteFile(short, []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"run", "--token", "short"}, nil, "--token"},
		{[]string{"run", "--token", " "}, nil, "--token"},
		{[]string{"run", "--token", "0123456789 abcdef"}, nil, "whitespace"},
		{[]string{"run"}, []string{"SANDBOXPOOL_TOKEN=x"}, "SANDBOXPOOL_TOKEN"},
		{[]string{"run", "--token-file", short}, nil, "--token-file"},
		{[]string{"run", "--token-file", dir + "/missing"}, nil, "--token-file"},
		{[]string{"run", "--token-file", short, "--token", "0123456789abcdef"}, nil, "--token-file"},
		{[]string{"claim", "--api", "127.0.0.1:1", "--token", "short"}, nil, "--token"},
	} {
		r := cli(t, append(slices.Clone(env), tc.env...), tc.args...)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code != 2 || len(lines) != 1 || !strings.Contains(lines[0], tc.want) {
			t.Errorf("%v %v: exit %d, %q: want exit 2 and one line naming %s", tc.env, tc.args, r.code, r.stderr, tc.want)
		}
		if strings.Contains(r.stderr, "0123456789") {
			t.Errorf("%v: the error shows the token: %q", tc.args, r.stderr)
		}
	}
	if entries, _ := os.ReadDir(state); len(entries) != 0 {
		t.Fatalf("bad tokens left %d files in the state dir", len(entries))
	}
}

// A token from --token-file guards an API on every address; the log says
// the addresses as bound, IPv6 included.
func TestTokenFileOnEveryAddress(t *testing.T) {
	state := t.TempDir()
	env := cliEnv(state)
	t.Cleanup(func() { tearDown(t, env) })
	const token = "sixteen-chars-token-0001"
	tf := t.TempDir() + "/token"
	if err := os.WriteFile(tf, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctl := startRun(t, env, append([]string{"--size", "1", "--listen", "0.0.0.0:0", "--token-file", tf}, fastRun[:len(fastRun)-2]...)...)
	addr := ctl.apiAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	logs := ctl.logs.String()
	if !strings.Contains(logs, "API listening") || !strings.Contains(logs, "0.0.0.0:"+port) || !strings.Contains(logs, "[::]:"+port) {
		t.Errorf("the log does not say 0.0.0.0 and [::]:\n%s", logs)
	}
	if strings.Contains(logs, token) {
		t.Errorf("the token is in the log")
	}
	for _, host := range []string{"127.0.0.1", "[::1]"} {
		for _, tok := range []string{"", token} {
			req, _ := http.NewRequest("GET", "http://"+host+":"+port+"/v1/pool", nil)
			if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				if host == "[::1]" {
					t.Logf("no IPv6 loopback here: %v", err)
					continue
				}
				t.Fatal(err)
			}
			resp.Body.Close()
			want := 401
			if tok != "" {
				want = 200
			}
			if resp.StatusCode != want {
				t.Errorf("GET %s /v1/pool with token %v: %d, want %d", host, tok != "", resp.StatusCode, want)
			}
		}
	}
	// The token is not in the process's argv.
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", ctl.cmd.Process.Pid)); err == nil && strings.Contains(string(cmdline), token) {
		t.Error("the token is visible in the process's command line")
	}
}

// Issue 13 case 4 on the binary: through the default loopback API, another
// local user can neither list nor claim; the owner can, with nothing to set.
func TestOtherUserIsRefusedByTheBinary(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	state := t.TempDir()
	env := cliEnv(state)
	t.Cleanup(func() { tearDown(t, env) })
	ctl := startRun(t, env, append([]string{"--size", "1", "--listen", "127.0.0.1:0"}, fastRun[:len(fastRun)-2]...)...)
	addr := ctl.apiAddr(t)
	testkit.Eventually(t, 30*time.Second, "1 ready", func() bool { return len(readyIDs(check(t, env))) == 1 })

	// The binary sits in a private temp dir: a copy that uid 65534 can run.
	dir, err := os.MkdirTemp("", "sandboxpool-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	self, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	bin := dir + "/sandboxpool"
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"check", "--api", addr}, {"claim", "--api", addr, "--timeout", "2s"}} {
		cmd := exec.Command(bin, args...)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "403") || !strings.Contains(string(out), "uid 0") {
			t.Errorf("%v as uid 65534: %v %q, want a 403 naming the owner's uid", args, err, out)
		}
	}
	if v := check(t, env); v.Counts.Claimed != 0 {
		t.Fatalf("another user claimed through the API: %+v", v.Counts)
	}
	// The owner: plain requests, no token.
	if r := cli(t, env, "claim", "--api", addr, "--timeout", "10s"); r.code != 0 {
		t.Fatalf("owner claim --api: exit %d %s", r.code, r.stderr)
	}
}
