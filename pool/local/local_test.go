package local_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/local"
	"golang.org/x/sys/unix"
)

// envCmdPort makes the test binary a tiny HTTP server on the given port: a
// --cmd workload that surely exists.
const envCmdPort = "LOCALTEST_CMD_PORT"

// envController makes the test binary a controller in another process: it
// creates one sandbox in the given state dir, prints its Ref, and blocks
// until killed (TestControllerKill9).
const envController = "LOCALTEST_CONTROLLER_DIR"

// envDial makes the test binary dial the agent socket named, send a ping
// and print the answer (TestPeerUID, run as another user).
const envDial = "LOCALTEST_DIAL"

// envFDLimit makes the test binary lower its RLIMIT_NOFILE (soft and hard)
// to the number given, start the agent of the pool in the state dir named
// by envFDDir (it inherits the limit), print the agent's pid and exit
// (TestFDLimit).
const (
	envFDLimit = "LOCALTEST_FD_LIMIT"
	envFDDir   = "LOCALTEST_FD_DIR"
)

func TestMain(m *testing.M) {
	local.MaybeRunChild()
	if port := os.Getenv(envCmdPort); port != "" {
		cmdServer(port)
	}
	if dir := os.Getenv(envController); dir != "" {
		controller(dir)
	}
	if sock := os.Getenv(envDial); sock != "" {
		dial(sock)
	}
	if limit := os.Getenv(envFDLimit); limit != "" {
		startLimitedAgent(limit, os.Getenv(envFDDir))
	}
	testkit.Main(m)
}

func controller(dir string) {
	b, err := local.New(local.Options{StateDir: dir, Pool: "ctl", IdleExit: 5 * time.Second})
	if err == nil {
		var ref pool.Ref
		if ref, err = b.Create(context.Background(), time.Minute); err == nil {
			_ = json.NewEncoder(os.Stdout).Encode(ref)
			_, _ = io.Copy(io.Discard, os.Stdin) // until killed
		}
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func cmdServer(port string) {
	if os.Getenv("PORT") != port {
		fmt.Fprintf(os.Stderr, "PORT=%q but {port}=%q\n", os.Getenv("PORT"), port)
		os.Exit(3)
	}
	body := "cmd port=" + port + " id=" + os.Getenv("SANDBOXPOOL_SANDBOX")
	err := http.ListenAndServe("127.0.0.1:"+port, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, body)
	}))
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func dial(sock string) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(0)
	}
	fmt.Fprintln(c, `{"op":"ping"}`)
	line, err := bufio.NewReader(c).ReadString('\n')
	fmt.Printf("answer: %s (%v)\n", strings.TrimSpace(line), err)
	os.Exit(0)
}

func startLimitedAgent(limit, dir string) {
	n, err := strconv.ParseUint(limit, 10, 64)
	if err == nil {
		err = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n})
	}
	var b *local.Backend
	if err == nil {
		b, err = local.New(local.Options{StateDir: dir, Pool: "test", IdleExit: 10 * time.Second})
	}
	if err == nil {
		var pid int
		if pid, err = b.AgentPid(context.Background()); err == nil {
			fmt.Println(pid)
			os.Exit(0)
		}
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// client keeps no idle connections, so goleak sees no transport goroutines.
var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}

func newBackend(t testing.TB, opts local.Options) *local.Backend {
	t.Helper()
	if opts.StateDir == "" {
		opts.StateDir = t.TempDir()
	}
	if opts.Pool == "" {
		opts.Pool = "test"
	}
	if opts.TermGrace == 0 {
		opts.TermGrace = 500 * time.Millisecond
	}
	if opts.IdleExit == 0 {
		opts.IdleExit = 10 * time.Second
	}
	b, err := local.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	// Leave nothing running, whatever the test did: the agent and every
	// process started for the pool.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		var left []int
		if !testkit.Until(10*time.Second, func() bool { left = procsOf(opts.StateDir, opts.Pool); return len(left) == 0 }) {
			for _, pid := range left {
				cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
				t.Errorf("process %d of pool %s left: %q", pid, opts.Pool, cmdline)
			}
			agentLog, _ := os.ReadFile(filepath.Join(opts.StateDir, opts.Pool+".agent.log"))
			t.Logf("agent log:\n%s", agentLog)
		}
	})
	return b
}

// procsOf returns the live processes of a pool: the agent (its spec names
// the state dir and the pool) and every --cmd workload (its mark names the
// agent's socket).
func procsOf(dir, poolName string) []int {
	sock := filepath.Join(dir, poolName+".agent.sock")
	spec := fmt.Sprintf(`"state_dir":%q,"pool":%q`, dir, poolName)
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err == nil && (strings.Contains(string(env), spec) || strings.Contains(string(env), sock+"\x00")) && testkit.Alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// get polls url until it answers 200 and returns the body.
func get(t testing.TB, url string) string {
	t.Helper()
	var body string
	var last error
	defer func() {
		if t.Failed() {
			t.Logf("last GET %s: %v", url, last)
		}
	}()
	testkit.Eventually(t, 10*time.Second, "GET "+url+" answers 200", func() bool {
		resp, err := client.Get(url)
		if err != nil {
			last = err
			return false
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		body, last = string(data), err
		if err == nil && resp.StatusCode != http.StatusOK {
			last = errors.New(resp.Status)
		}
		return err == nil && resp.StatusCode == http.StatusOK
	})
	return body
}

func refused(url string) bool {
	resp, err := client.Get(url)
	if err == nil {
		resp.Body.Close() // an unread body would keep its connection (goleak)
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

func ids(refs []pool.Ref) []string {
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i] = r.ID
	}
	slices.Sort(out)
	return out
}

func list(t testing.TB, b *local.Backend) []string {
	t.Helper()
	refs, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ids(refs)
}

func mustCreate(t testing.TB, b *local.Backend, ttl time.Duration) pool.Ref {
	t.Helper()
	ref, err := b.Create(context.Background(), ttl)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func agentPid(t testing.TB, b *local.Backend) int {
	t.Helper()
	pid, err := b.AgentPid(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestCreateListTerminate(t *testing.T) {
	t.Parallel()
	b := newBackend(t, local.Options{})
	if b.Name() != "local" {
		t.Fatalf("Name = %q", b.Name())
	}
	// Concurrently, as the engine does: one agent starts, whoever asks first.
	refs := make([]pool.Ref, 3)
	var wg sync.WaitGroup
	for i := range refs {
		wg.Go(func() { refs[i] = mustCreate(t, b, time.Minute) })
	}
	wg.Wait()
	for _, r := range refs {
		if !strings.HasPrefix(r.URL, "http://127.0.0.1:") || len(r.ID) != len("sb-")+12 {
			t.Fatalf("bad ref %+v", r)
		}
		if d := r.ExpiresAt.Sub(r.CreatedAt); d != time.Minute {
			t.Fatalf("expires - created = %s", d)
		}
		if body := get(t, r.URL); !strings.Contains(body, "README.txt") {
			t.Fatalf("GET %s: no README.txt in listing:\n%s", r.URL, body)
		}
		if body := get(t, r.URL+"/README.txt"); !strings.Contains(body, r.ID) {
			t.Fatalf("README.txt does not name %s:\n%s", r.ID, body)
		}
	}
	listed, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range refs {
		if !slices.Contains(listed, r) { // == on times too: no monotonic or zone drift
			t.Fatalf("List = %+v, lacks %+v", listed, r)
		}
	}
	if len(listed) != len(refs) {
		t.Fatalf("List = %+v, want %d", listed, len(refs))
	}
	if n := len(procsOf(filepath.Dir(b.Dir()), "test")); n != 1 {
		t.Fatalf("%d processes for 3 built-in sandboxes, want 1 (the agent)", n)
	}

	victim := refs[0]
	if err := b.Terminate(context.Background(), victim.ID); err != nil {
		t.Fatal(err)
	}
	if !refused(victim.URL) {
		t.Fatalf("%s still answers after Terminate", victim.URL)
	}
	if got, want := list(t, b), ids(refs[1:]); !slices.Equal(got, want) {
		t.Fatalf("List after Terminate = %v, want %v", got, want)
	}
	if m, _ := filepath.Glob(filepath.Join(b.Dir(), victim.ID+"*")); len(m) != 0 {
		t.Fatalf("files left after Terminate: %v", m)
	}
	// Gone, unknown and malformed ids are not errors.
	for _, id := range []string{victim.ID, "sb-000000000000", "../../etc/passwd"} {
		if err := b.Terminate(context.Background(), id); err != nil {
			t.Fatalf("Terminate(%q) = %v", id, err)
		}
	}
	// Claimed is recorded by the agent, for every client.
	if err := b.MarkClaimed(context.Background(), refs[1].ID, "test"); err != nil {
		t.Fatal(err)
	}
	other := newBackend(t, local.Options{StateDir: filepath.Dir(b.Dir()), Pool: "test"})
	got, err := other.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range got {
		if r.Claimed != (r.ID == refs[1].ID) {
			t.Fatalf("List = %+v: only %s is claimed", got, refs[1].ID)
		}
	}
	if err := b.MarkClaimed(context.Background(), victim.ID, "test"); !errors.Is(err, pool.ErrNotFound) {
		t.Fatalf("MarkClaimed of a terminated sandbox = %v, want pool.ErrNotFound", err)
	}
}

func TestModes(t *testing.T) {
	t.Parallel()
	state := filepath.Join(t.TempDir(), "state")
	b := newBackend(t, local.Options{StateDir: state, Cmd: "echo hello; exec sleep 60"})
	if st, err := os.Stat(state); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("state dir after New: %v %v, want 0700", st.Mode(), err)
	}
	ref := mustCreate(t, b, time.Minute)
	testkit.Eventually(t, 5*time.Second, "the log written", func() bool {
		data, _, err := b.ReadLog(context.Background(), ref.ID, 0, 100)
		return err == nil && strings.Contains(string(data), "hello")
	})
	err := filepath.Walk(state, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		want := os.FileMode(0o600)
		switch {
		case info.IsDir():
			want = 0o700
		case info.Mode()&os.ModeSocket != 0:
			want = 0o600
		}
		if info.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, info.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestExpiryWithoutController(t *testing.T) {
	t.Parallel()
	b := newBackend(t, local.Options{Cmd: "exec sleep 300"})
	builtin := newBackend(t, local.Options{StateDir: filepath.Dir(b.Dir()), Pool: "builtin"})
	ref := mustCreate(t, b, 5*time.Second)
	// Read before the built-in one's start below, which on a loaded machine
	// can outlast the workload's 5 s (the README's go test ./... at load
	// 25); polled, as the workload is found by its mark only once sh has
	// exec'd it (CI: "Pids = []" 0.08 s in).
	var pids []int
	if !testkit.Until(3*time.Second, func() bool { pids = b.Pids(ref.ID); return len(pids) == 1 }) {
		t.Fatalf("Pids = %v, want the workload", pids)
	}
	bref := mustCreate(t, builtin, 5*time.Second)
	get(t, bref.URL)
	// No backend call from here on: the agent alone must act.
	testkit.Eventually(t, 15*time.Second, "expired workload killed by the agent", func() bool { return !testkit.Alive(pids[0]) })
	testkit.Eventually(t, 5*time.Second, "expired built-in sandbox closed", func() bool { return refused(bref.URL) })
	if time.Now().Before(ref.ExpiresAt) {
		t.Fatalf("killed before its expiry %s", ref.ExpiresAt)
	}
	testkit.Eventually(t, 5*time.Second, "files removed", func() bool {
		m, _ := filepath.Glob(filepath.Join(b.Dir(), ref.ID+"*"))
		return len(m) == 0
	})
	if got := list(t, b); len(got) != 0 {
		t.Fatalf("List = %v", got)
	}
}

func TestAgentKill9(t *testing.T) {
	t.Parallel()
	// The workload dies with the agent (Pdeathsig); what it started in
	// another session is found by its mark and killed by the next call.
	b := newBackend(t, local.Options{Cmd: "setsid sleep 777 & exec sleep 300"})
	ref := mustCreate(t, b, time.Minute)
	var pids []int
	testkit.Eventually(t, 5*time.Second, "the workload and its escapee started", func() bool {
		pids = b.Pids(ref.ID)
		return len(pids) == 2
	})
	agent := agentPid(t, b)
	if err := syscall.Kill(agent, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "the workload dies with its agent", func() bool {
		return len(b.Pids(ref.ID)) <= 1
	})
	if got := list(t, b); len(got) != 0 {
		t.Fatalf("List with the agent dead = %v", got)
	}
	testkit.Eventually(t, 10*time.Second, "the escapee killed", func() bool {
		return !slices.ContainsFunc(pids, testkit.Alive)
	})
	next := mustCreate(t, b, time.Minute) // starts a new agent
	if pid := agentPid(t, b); pid == agent {
		t.Fatalf("agent pid %d again", pid)
	}
	if got := list(t, b); !slices.Equal(got, []string{next.ID}) {
		t.Fatalf("List = %v, want [%s]", got, next.ID)
	}
}

func TestSubreaper(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"terminate", "expiry", "exit"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			cmd := "setsid sleep 777 & exec sleep 300"
			if how == "exit" {
				cmd = "setsid sleep 777 & sleep 1; exit 0"
			}
			b := newBackend(t, local.Options{Cmd: cmd})
			ttl := time.Minute
			if how == "expiry" {
				ttl = 2 * time.Second
			}
			ref := mustCreate(t, b, ttl)
			var pids []int
			testkit.Eventually(t, 5*time.Second, "the escapee started", func() bool {
				pids = b.Pids(ref.ID)
				return len(pids) >= 2
			})
			if how == "terminate" {
				if err := b.Terminate(context.Background(), ref.ID); err != nil {
					t.Fatal(err)
				}
			}
			testkit.Eventually(t, 10*time.Second, "every process of the sandbox gone and reaped", func() bool {
				return !slices.ContainsFunc(pids, func(p int) bool { return syscall.Kill(p, 0) == nil })
			})
		})
	}
}

func TestLogCap(t *testing.T) {
	t.Parallel()
	const capBytes = 64 << 10
	b := newBackend(t, local.Options{Cmd: "exec yes chatty", LogMax: capBytes})
	ref := mustCreate(t, b, time.Minute)
	testkit.Eventually(t, 20*time.Second, "8 MB of output", func() bool {
		_, next, err := b.ReadLog(context.Background(), ref.ID, -1, 0)
		return err == nil && next > 8<<20
	})
	total := int64(0)
	for _, name := range []string{ref.ID + ".log", ref.ID + ".log.1"} {
		if st, err := os.Stat(filepath.Join(b.Dir(), name)); err == nil { // gone for a moment in a rotation
			total += st.Size()
		}
	}
	if total > capBytes {
		t.Fatalf("logs hold %d bytes, cap %d", total, capBytes)
	}
	data, next, err := b.ReadLog(context.Background(), ref.ID, -1, 1000)
	if err != nil || len(data) != 1000 || !strings.Contains(string(data), "chatty\nchatty\n") {
		t.Fatalf("ReadLog(-1, 1000) = %d bytes %q, %v", len(data), data, err)
	}
	// An offset that rotated away reads from the oldest part kept.
	old, from, err := b.ReadLog(context.Background(), ref.ID, 0, 100)
	if err != nil || len(old) == 0 || from <= 100 {
		t.Fatalf("ReadLog(0) = %q up to %d, %v: want the oldest part kept", old, from, err)
	}
	if next <= 8<<20 {
		t.Fatalf("ReadLog(-1) ends at %d, want past 8 MB", next)
	}
}

func TestExitAtOnce(t *testing.T) {
	t.Parallel()
	b := newBackend(t, local.Options{Cmd: "echo starting; echo FATAL config missing >&2; exit 3"})
	ref := mustCreate(t, b, time.Minute)
	start := time.Now()
	var info pool.ExitInfo
	// Seen by the agent's SIGCHLD, not by a poll: no deadline of the
	// product's to beat, only the test's against a hang (at load 10 the
	// race-built agent took over 5 s).
	testkit.Eventually(t, 20*time.Second, "the exit seen", func() bool {
		exited, i, err := b.Exited(context.Background(), ref.ID)
		if err != nil {
			t.Fatal(err)
		}
		info = i
		return exited
	})
	t.Logf("exit seen %s after the creation", time.Since(start).Round(time.Millisecond))
	if info.Code != 3 || !strings.Contains(info.Tail, "FATAL config missing") || !strings.Contains(info.Tail, "starting") {
		t.Fatalf("ExitInfo = %+v", info)
	}
	if got := list(t, b); len(got) != 0 {
		t.Fatalf("List = %v, want the exited sandbox gone", got)
	}
	data, _, err := b.ReadLog(context.Background(), ref.ID, 0, 4096)
	if err != nil || !strings.Contains(string(data), "FATAL") {
		t.Fatalf("log after exit: %q %v", data, err)
	}
	if err := b.Terminate(context.Background(), ref.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.ReadLog(context.Background(), ref.ID, 0, 10); !errors.Is(err, pool.ErrNotFound) {
		t.Fatalf("ReadLog once the sandbox is forgotten = %v, want pool.ErrNotFound", err)
	}
	if m, _ := filepath.Glob(filepath.Join(b.Dir(), ref.ID+"*")); len(m) != 0 {
		t.Fatalf("files left: %v", m)
	}
	// Not running yet is not exited.
	slow := newBackend(t, local.Options{StateDir: filepath.Dir(b.Dir()), Pool: "slow", Warmup: time.Hour})
	sref := mustCreate(t, slow, time.Minute)
	if exited, _, err := slow.Exited(context.Background(), sref.ID); exited || err != nil {
		t.Fatalf("Exited of a warming sandbox = %v, %v", exited, err)
	}
}

func TestPeerUID(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		t.Skip("needs root to run a process as another user")
	}
	// Reachable by another user on purpose: the refusal must come from the
	// peer's uid, not from the file modes.
	state, err := os.MkdirTemp("", "sp-agent-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	b := newBackend(t, local.Options{StateDir: state})
	mustCreate(t, b, time.Minute)
	sock := filepath.Join(state, "test.agent.sock")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	copyExe := filepath.Join(state, "dialer")
	if err := os.WriteFile(copyExe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{state, copyExe, sock} {
		if err := os.Chmod(p, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	run := func(uid uint32) string {
		cmd := exec.Command(copyExe)
		cmd.Env = []string{envDial + "=" + sock}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("dialer as uid %d: %v\n%s", uid, err, out)
		}
		return string(out)
	}
	if out := run(65534); !strings.Contains(out, "only its own user") || strings.Contains(out, "pid") {
		t.Fatalf("uid 65534 got %q, want a refusal", out)
	}
	if out := run(0); !strings.Contains(out, `"pid"`) {
		t.Fatalf("uid 0 got %q, want an answer", out)
	}
}

func TestIdleExit(t *testing.T) {
	t.Parallel()
	b := newBackend(t, local.Options{IdleExit: 300 * time.Millisecond})
	ref := mustCreate(t, b, time.Minute)
	agent := agentPid(t, b)
	// A sandbox keeps it alive, however quiet: its idle check says so once
	// the idle time passed with no caller (the log is read, not the agent:
	// a call would end the quiet).
	agentLog := filepath.Join(filepath.Dir(b.Dir()), "test.agent.log")
	testkit.Eventually(t, 10*time.Second, "the idle check to find the agent quiet", func() bool {
		l, _ := os.ReadFile(agentLog)
		return strings.Contains(string(l), "kept running for its 1 sandboxes")
	})
	if !testkit.Alive(agent) {
		t.Fatal("the agent exited with a sandbox running")
	}
	if err := b.Terminate(context.Background(), ref.ID); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, "the idle agent exits", func() bool { return !testkit.Alive(agent) })
	if _, err := os.Stat(filepath.Join(filepath.Dir(b.Dir()), "test.agent.sock")); !os.IsNotExist(err) {
		t.Fatalf("socket left: %v", err)
	}
}

func TestControllerKill9(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctl := exec.Command(exe)
	ctl.Env = append(os.Environ(), envController+"="+dir)
	ctl.Stderr = os.Stderr
	stdin, _ := ctl.StdinPipe() // held open: the controller blocks on it
	defer stdin.Close()
	out, _ := ctl.StdoutPipe()
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	var ref pool.Ref
	if err := json.NewDecoder(out).Decode(&ref); err != nil {
		_ = ctl.Process.Kill()
		_ = ctl.Wait()
		t.Fatalf("controller: %v", err)
	}
	_ = ctl.Process.Signal(syscall.SIGKILL)
	_ = ctl.Wait()

	get(t, ref.URL) // still serving, its controller dead
	b := newBackend(t, local.Options{StateDir: dir, Pool: "ctl"})
	if got := list(t, b); !slices.Equal(got, []string{ref.ID}) {
		t.Fatalf("List = %v, want [%s]", got, ref.ID)
	}
	if err := b.Terminate(context.Background(), ref.ID); err != nil {
		t.Fatal(err)
	}
	if !refused(ref.URL) {
		t.Fatal("still answers after Terminate")
	}
}

func TestCmd(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Run("self", func(t *testing.T) {
		t.Parallel()
		b := newBackend(t, local.Options{Cmd: envCmdPort + "={port} exec '" + exe + "'"})
		ref := mustCreate(t, b, time.Minute)
		_, port, _ := net.SplitHostPort(strings.TrimPrefix(ref.URL, "http://"))
		if body, want := get(t, ref.URL), "cmd port="+port+" id="+ref.ID; body != want {
			t.Fatalf("body %q, want %q", body, want)
		}
		pids := b.Pids(ref.ID)
		if len(pids) != 1 {
			t.Fatalf("Pids = %v: want one process (one exec, no wrapper)", pids)
		}
		if err := b.Terminate(context.Background(), ref.ID); err != nil {
			t.Fatal(err)
		}
		if testkit.Alive(pids[0]) {
			t.Fatal("workload testkit.Alive after Terminate")
		}
	})
	t.Run("python", func(t *testing.T) {
		t.Parallel()
		if _, err := exec.LookPath("python3"); err != nil {
			t.Skip("no python3")
		}
		b := newBackend(t, local.Options{Cmd: "python3 -m http.server {port} --bind 127.0.0.1"})
		ref := mustCreate(t, b, time.Minute)
		if body := get(t, ref.URL); !strings.Contains(body, "README.txt") {
			t.Fatalf("python listing lacks README.txt:\n%s", body)
		}
	})
	t.Run("kill", func(t *testing.T) {
		t.Parallel()
		b := newBackend(t, local.Options{Cmd: "exec sleep 300"})
		ref := mustCreate(t, b, time.Minute)
		if err := b.Kill(context.Background(), ref.ID); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, 5*time.Second, "killed workload dropped", func() bool { return len(list(t, b)) == 0 })
		if exited, info, _ := b.Exited(context.Background(), ref.ID); !exited || info.Code != -9 {
			t.Fatalf("Exited = %v %+v, want killed by SIGKILL", exited, info)
		}
	})
}

func TestWarmup(t *testing.T) {
	t.Parallel()
	const warmup = 1500 * time.Millisecond
	b := newBackend(t, local.Options{Warmup: warmup})
	ref := mustCreate(t, b, time.Minute)
	if !refused(ref.URL) {
		t.Fatal("GET during warmup not refused")
	}
	get(t, ref.URL)
	if since := time.Since(ref.CreatedAt); since < warmup {
		t.Fatalf("answered %s after creation, before the %s warmup", since, warmup)
	}
}

func TestCreateFailures(t *testing.T) {
	t.Parallel()
	for name, exe := range map[string]string{
		"missing binary":         "/nonexistent/sandboxpool",
		"binary not dispatching": "/bin/true", // like a main without MaybeRunChild
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t, local.Options{Exe: exe})
			if ref, err := b.Create(context.Background(), time.Minute); err == nil {
				t.Fatalf("Create = %+v, want an error", ref)
			}
		})
	}
	t.Run("canceled", func(t *testing.T) {
		t.Parallel()
		b := newBackend(t, local.Options{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := b.Create(ctx, time.Minute); !errors.Is(err, context.Canceled) {
			t.Fatalf("Create = %v, want canceled", err)
		}
	})
	t.Run("deadline during start", func(t *testing.T) {
		t.Parallel()
		b := newBackend(t, local.Options{})
		mustCreate(t, b, time.Minute) // the agent runs
		for d := 50 * time.Microsecond; d < 20*time.Millisecond; d *= 2 {
			ctx, cancel := context.WithTimeout(context.Background(), d)
			ref, err := b.Create(ctx, time.Minute)
			cancel()
			if err != nil {
				continue
			}
			if err := b.Terminate(context.Background(), ref.ID); err != nil {
				t.Fatal(err)
			}
		}
		testkit.Eventually(t, 10*time.Second, "only the first sandbox left", func() bool { return len(list(t, b)) == 1 })
	})
	t.Run("bad options", func(t *testing.T) {
		if _, err := local.New(local.Options{Pool: "a/b", StateDir: t.TempDir()}); err == nil {
			t.Fatal("New accepted pool a/b")
		}
		if _, err := local.New(local.Options{Pool: "p"}); err == nil {
			t.Fatal("New accepted no state dir")
		}
	})
}

// TestCost creates 200 built-in sandboxes through a running agent, 50 at a
// time, each GET once as its first health check would, and reports the
// agent's CPU per sandbox and the time to create 50.
func TestCost(t *testing.T) {
	if testing.Short() {
		t.Skip("a measurement")
	}
	b := newBackend(t, local.Options{})
	pid := agentPid(t, b)
	before := cpuTicks(t, pid)
	var took []time.Duration
	for range 4 {
		start := time.Now()
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() { get(t, mustCreate(t, b, time.Minute).URL) })
		}
		wg.Wait()
		took = append(took, time.Since(start).Round(time.Millisecond))
	}
	ms := float64(cpuTicks(t, pid)-before) * 10
	t.Logf("50 sandboxes created and answering in %v; agent CPU %.0f ms for 200, %.2f ms per sandbox", took, ms, ms/200)
}

// cpuTicks is utime+stime of pid in clock ticks (10 ms here).
func cpuTicks(t testing.TB, pid int) int64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

// BenchmarkCreate measures Create until the first 200 from its URL.
func BenchmarkCreate(b *testing.B) {
	be := newBackend(b, local.Options{})
	mustCreate(b, be, time.Minute) // the agent runs
	for b.Loop() {
		ref, err := be.Create(context.Background(), time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		get(b, ref.URL)
		b.StopTimer()
		if err := be.Terminate(context.Background(), ref.ID); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// TestFDLimit: an agent holds no file descriptor per sandbox log. Under a
// descriptor limit of 128 it runs 80 --cmd sandboxes that each wrote more
// than a log keeps in memory (80 pipes, 80 logs on disk): with a descriptor
// per log that is 160 and creations fail with "too many open files".
func TestFDLimit(t *testing.T) {
	t.Parallel()
	const limit, n = 128, 80
	dir := t.TempDir()
	// The workload writes 3 KB (past what a log keeps in memory) and idles.
	b := newBackend(t, local.Options{StateDir: dir, Cmd: `head -c 3000 /dev/zero | tr '\0' x; echo " end $PORT"; exec sleep 120`})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envFDLimit+"="+strconv.Itoa(limit), envFDDir+"="+dir)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("start the agent under a limit of %d descriptors: %v (%s)", limit, err, out)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || agentPid(t, b) != pid {
		t.Fatalf("the limited agent said %q; the backend talks to %d", out, agentPid(t, b))
	}
	lim, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if !strings.Contains(string(lim), "Max open files            128                  128") {
		t.Fatalf("the agent's limits:\n%s", lim)
	}
	refs := make([]pool.Ref, n)
	for i := range refs {
		refs[i] = mustCreate(t, b, time.Minute)
	}
	for _, ref := range refs {
		want := fmt.Sprintf(" end %s\n", ref.URL[strings.LastIndexByte(ref.URL, ':')+1:])
		testkit.Eventually(t, 20*time.Second, ref.ID+" logged its output", func() bool {
			data, next, err := b.ReadLog(context.Background(), ref.ID, 0, 1<<20)
			return err == nil && next == 3000+int64(len(want)) && strings.HasSuffix(string(data), want)
		})
		if _, err := os.Stat(filepath.Join(b.Dir(), ref.ID+".log")); err != nil {
			t.Fatalf("%s: a log past the memory part is on disk: %v", ref.ID, err)
		}
	}
	if got := len(list(t, b)); got != n {
		t.Fatalf("%d sandboxes run, want %d", got, n)
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	t.Logf("%d sandboxes with logs on disk, the agent holds %d descriptors (limit %d)", n, len(fds), limit)
	if agentLog, _ := os.ReadFile(filepath.Join(dir, "test.agent.log")); strings.Contains(string(agentLog), "too many open files") {
		t.Fatalf("agent log:\n%s", agentLog)
	}
}

// The agent's record of a claim is the last word when a store goes stale
// (an old copy put back): a second claim of the sandbox is refused, the
// same claim recorded again is fine, and the pool's own reasons never
// terminate it (a user's terminate still does).
func TestClaimRecordRefusesASecondClaimAndPoolTermination(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newBackend(t, local.Options{})
	r := mustCreate(t, b, time.Minute)
	claim := pool.Entry{Ref: r, ClaimedBy: "api 127.0.0.1:1", ClaimedAt: time.Now()}
	if err := b.MarkClaimedOnce(ctx, claim); err != nil {
		t.Fatal(err)
	}
	if err := b.MarkClaimedOnce(ctx, claim); err != nil {
		t.Fatalf("the same claim recorded again: %v", err)
	}
	again := claim
	again.ClaimedAt = claim.ClaimedAt.Add(time.Millisecond) // same client, another claim
	if err := b.MarkClaimedOnce(ctx, again); !errors.Is(err, pool.ErrAlreadyClaimed) {
		t.Fatalf("a second claim: %v, want ErrAlreadyClaimed", err)
	}
	if err := b.TerminatePooled(ctx, r.ID); !errors.Is(err, pool.ErrAlreadyClaimed) {
		t.Fatalf("a pool's termination of a claimed sandbox: %v, want ErrAlreadyClaimed", err)
	}
	if body := get(t, r.URL); !strings.Contains(body, "README.txt") {
		t.Fatalf("the claimed sandbox stopped answering:\n%s", body)
	}
	if err := b.Terminate(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	listed, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range listed {
		if l.ID == r.ID {
			t.Fatalf("%s still listed after a user's terminate", r.ID)
		}
	}
	// A stale store's entry of it: the pool's termination says it had ended.
	if err := b.TerminatePooled(ctx, r.ID); !errors.Is(err, pool.ErrNotFound) {
		t.Fatalf("a pool's termination of a sandbox that ended: %v, want ErrNotFound", err)
	}
}

// TestTimerSlack: the agent runs with a coarse timer slack (1 ms: its
// runtime's short sleeps while busy coalesce), inherited from its start,
// and a --cmd workload with the slack of the user's processes, not the
// agent's.
func TestTimerSlack(t *testing.T) {
	t.Parallel()
	slack := func(pid int) string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/timerslack_ns", pid))
		if err != nil {
			t.Skip("no timer slack here:", err)
		}
		return strings.TrimSpace(string(b))
	}
	slack(os.Getpid()) // skips where there is none
	// The user's slack as the backend reads it, on its own thread. Not the
	// process's main thread's (/proc/PID/timerslack_ns): a parallel test's
	// agent start may hold that one at the agent's 1 ms for its fork (a
	// program reading it while 4 goroutines start processes so read 1 ms
	// 40% of the time; its own thread's, never).
	cur, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil {
		t.Skip("no timer slack here:", err)
	}
	own := strconv.Itoa(cur)
	b := newBackend(t, local.Options{Cmd: "exec sleep 300"})
	ref := mustCreate(t, b, time.Minute)
	if got := slack(agentPid(t, b)); got != "1000000" {
		t.Errorf("agent: timer slack %s ns, want 1000000", got)
	}
	var pids []int // found by their environment: not while sh execs the workload
	testkit.Eventually(t, 5*time.Second, "the workload's process", func() bool { pids = b.Pids(ref.ID); return len(pids) == 1 })
	if got := slack(pids[0]); got != own {
		t.Errorf("workload: timer slack %s ns, want the user's %s", got, own)
	}
}

// TestAgentDeathIsSaid: an agent killed (kill -9) is news for the pool's
// log once a new one runs, whether the next call started it or a list
// found it dead first (and swept what it left); one that stopped cleanly
// (terminate --all, idle) is none. Without it, its sandboxes' end read as
// "terminated (unhealthy) by the controller" only.
func TestAgentDeathIsSaid(t *testing.T) {
	t.Parallel()
	b := newBackend(t, local.Options{})
	var mu sync.Mutex
	var notes []string
	b.NotifyTo(func(m string) { mu.Lock(); notes = append(notes, m); mu.Unlock() })
	said := func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(notes) }
	mustCreate(t, b, time.Minute)
	kill := func() {
		t.Helper()
		if err := syscall.Kill(agentPid(t, b), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, 10*time.Second, "the agent gone", func() bool { return len(list(t, b)) == 0 })
	}
	kill() // the list that sees it gone sweeps
	mustCreate(t, b, time.Minute)
	if got := said(); len(got) != 1 || !strings.Contains(got[0], "died (killed or crashed) and a new one runs") {
		t.Fatalf("after a kill -9 and a new agent: notes %q", got)
	}
	if err := syscall.Kill(agentPid(t, b), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "a new agent", func() bool {
		_, err := b.Create(context.Background(), time.Minute)
		return err == nil
	})
	if got := said(); len(got) != 2 {
		t.Fatalf("after a second kill -9 (no list between): notes %q", got)
	}
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, b, time.Minute)
	if got := said(); len(got) != 2 {
		t.Fatalf("after a clean stop: notes %q, want no more", got)
	}
}

// TestShutdownReturnsOnceTheAgentExited: terminate --all returns once the
// agent has exited, its last files written: before, it returned with the
// agent still tearing down, which wrote in the state dir after (a test's
// cleanup failed "directory not empty" removing it).
func TestShutdownReturnsOnceTheAgentExited(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := newBackend(t, local.Options{StateDir: dir, Pool: "down"})
	for i := range 10 {
		mustCreate(t, b, time.Minute)
		if err := b.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, "down.agent.clean")); err != nil {
			t.Fatalf("round %d: Shutdown returned before the agent's exit: %v", i, err)
		}
	}
}

// The agent holds its lock for life: one agent per pool, and a controller
// takes a free lock for the agent's death (it sweeps its processes). The
// lock's file, once unreferenced, was closed by its finalizer at a GC.
func TestAgentHoldsItsLockForLife(t *testing.T) {
	t.Setenv("GOGC", "1") // the agent inherits it: a GC every few allocations
	b := newBackend(t, local.Options{})
	mustCreate(t, b, time.Minute) // starts the agent
	lock, err := os.OpenFile(filepath.Join(filepath.Dir(b.Dir()), "test.agent.lock"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	for i := range 40 {
		mustCreate(t, b, time.Minute) // work for the agent: allocations, GCs
		list(t, b)
		if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			_ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
			t.Fatalf("the agent's lock was free after %d creations, the agent running", i+1)
		}
	}
}
