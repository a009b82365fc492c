package local_test

import (
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

	"go.uber.org/goleak"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/local"
)

// envCmdPort makes the test binary a tiny HTTP server on the given port: the
// --cmd workload of TestCmd, a command that surely exists.
const envCmdPort = "LOCALTEST_CMD_PORT"

// envController makes the test binary a controller in another process: it
// creates one sandbox in the given state dir, prints its Ref, and blocks
// until killed (TestControllerKill9).
const envController = "LOCALTEST_CONTROLLER_DIR"

func TestMain(m *testing.M) {
	local.MaybeRunChild()
	if port := os.Getenv(envCmdPort); port != "" {
		cmdServer(port)
	}
	if dir := os.Getenv(envController); dir != "" {
		controller(dir)
	}
	goleak.VerifyTestMain(m)
}

func controller(dir string) {
	b, err := local.New(local.Options{StateDir: dir, Pool: "ctl"})
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
	body := "cmd port=" + port + " id=" + os.Getenv("SANDBOXPOOL_LOCAL_ID")
	err := http.ListenAndServe("127.0.0.1:"+port, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, body)
	}))
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
	b, err := local.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	// Leave nothing running, whatever the test did, and check that nothing
	// was leaked outside the records.
	t.Cleanup(func() {
		refs, _ := b.List(context.Background())
		for _, r := range refs {
			_ = b.Terminate(context.Background(), r.ID)
		}
		eventually(t, 10*time.Second, "no process of "+b.Dir()+" left", func() bool { return len(procsOf(b.Dir())) == 0 })
	})
	return b
}

// procsOf returns the live processes whose environment mentions dir: the
// launchers, supervisors and built-in servers of one backend (their spec
// names the directory).
func procsOf(dir string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if env, err := os.ReadFile("/proc/" + e.Name() + "/environ"); err == nil && strings.Contains(string(env), dir) {
			pid, _ := strconv.Atoi(e.Name())
			pids = append(pids, pid)
		}
	}
	return pids
}

func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
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
	eventually(t, 10*time.Second, "GET "+url+" answers 200", func() bool {
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

func groupGone(pgid int) bool { return errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH) }

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

func TestCreateListTerminate(t *testing.T) {
	t.Parallel()
	b := newBackend(t, local.Options{})
	if b.Name() != "local" {
		t.Fatalf("Name = %q", b.Name())
	}
	// Concurrently, as the engine does.
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

	victim := refs[0]
	pgid, err := b.Pgid(victim.ID)
	if err != nil {
		t.Fatal(err)
	}
	if pids, _ := b.Pids(victim.ID); len(pids) < 2 {
		t.Fatalf("Pids = %v, want supervisor and workload", pids)
	}
	if err := b.Terminate(context.Background(), victim.ID); err != nil {
		t.Fatal(err)
	}
	// Orphaned zombies are reaped by init, which may take a moment.
	eventually(t, 10*time.Second, "process group of the terminated sandbox gone", func() bool { return groupGone(pgid) })
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
}

func TestExpiryWithoutController(t *testing.T) {
	t.Parallel()
	b := newBackend(t, local.Options{})
	ref := mustCreate(t, b, 3*time.Second)
	get(t, ref.URL)
	pgid, err := b.Pgid(ref.ID)
	if err != nil {
		t.Fatal(err)
	}
	// No backend call from here on: the supervisor alone must act.
	eventually(t, 15*time.Second, "expired sandbox killed by its supervisor", func() bool { return groupGone(pgid) })
	if time.Now().Before(ref.ExpiresAt) {
		t.Fatalf("killed before its expiry %s", ref.ExpiresAt)
	}
	if _, err := os.Stat(filepath.Join(b.Dir(), ref.ID+".json")); !os.IsNotExist(err) {
		t.Fatalf("supervisor left its record: %v", err)
	}
	if got := list(t, b); len(got) != 0 {
		t.Fatalf("List = %v", got)
	}
}

func TestKill9(t *testing.T) {
	t.Parallel()
	for _, target := range []string{"workload", "supervisor"} {
		t.Run(target, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t, local.Options{})
			ref := mustCreate(t, b, time.Minute)
			get(t, ref.URL)
			pgid, _ := b.Pgid(ref.ID)
			pids, err := b.Pids(ref.ID)
			if err != nil {
				t.Fatal(err)
			}
			victim := pgid // the supervisor leads the group
			if target == "workload" {
				victim = slices.DeleteFunc(pids, func(p int) bool { return p == pgid })[0]
			}
			if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			eventually(t, 10*time.Second, "List drops the sandbox", func() bool { return len(list(t, b)) == 0 })
			eventually(t, 10*time.Second, "no process of the sandbox left", func() bool { return groupGone(pgid) })
		})
	}
}

func TestRestartedController(t *testing.T) {
	t.Parallel()
	opts := local.Options{StateDir: t.TempDir(), Pool: "restart"}
	first := newBackend(t, opts)
	a, c := mustCreate(t, first, time.Minute), mustCreate(t, first, time.Minute)
	// Another pool in the same state dir is not ours.
	other := newBackend(t, local.Options{StateDir: opts.StateDir, Pool: "other"})
	mustCreate(t, other, time.Minute)

	second := newBackend(t, opts) // as after a controller restart
	if got, want := list(t, second), ids([]pool.Ref{a, c}); !slices.Equal(got, want) {
		t.Fatalf("restarted List = %v, want %v", got, want)
	}
	pgid, _ := second.Pgid(a.ID)
	if err := second.Terminate(context.Background(), a.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "group gone", func() bool { return groupGone(pgid) })
	if got := list(t, first); !slices.Equal(got, []string{c.ID}) {
		t.Fatalf("first List = %v, want [%s]", got, c.ID)
	}
	get(t, c.URL)
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
	pgid, _ := b.Pgid(ref.ID)
	if err := b.Terminate(context.Background(), ref.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "group gone", func() bool { return groupGone(pgid) })
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
		pgid, _ := b.Pgid(ref.ID)
		if err := b.Terminate(context.Background(), ref.ID); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "group gone", func() bool { return groupGone(pgid) })
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
	t.Run("exits", func(t *testing.T) {
		t.Parallel()
		b := newBackend(t, local.Options{Cmd: "exit 3"})
		ref := mustCreate(t, b, time.Minute)
		eventually(t, 10*time.Second, "dead workload dropped", func() bool { return len(list(t, b)) == 0 })
		eventually(t, 10*time.Second, "files removed", func() bool {
			m, _ := filepath.Glob(filepath.Join(b.Dir(), ref.ID+"*"))
			return len(m) == 0
		})
	})
}

func TestWarmup(t *testing.T) {
	t.Parallel()
	const warmup = 1500 * time.Millisecond
	b := newBackend(t, local.Options{Warmup: warmup})
	ref := mustCreate(t, b, time.Minute)
	_, err := client.Get(ref.URL)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("GET during warmup: %v, want connection refused", err)
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
			if m, _ := filepath.Glob(filepath.Join(b.Dir(), "*")); len(m) != 0 {
				t.Fatalf("files left: %v", m)
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
		// Deadlines around the start time hit every step; whichever fails, the
		// sandbox must not survive (the cleanup checks no process is left).
		for d := 500 * time.Microsecond; d < 40*time.Millisecond; d *= 2 {
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
		eventually(t, 10*time.Second, "no files left", func() bool {
			m, _ := filepath.Glob(filepath.Join(b.Dir(), "*"))
			return len(m) == 0
		})
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

// BenchmarkCreate measures cold start: Create until the first 200 from its URL.
func BenchmarkCreate(b *testing.B) {
	be := newBackend(b, local.Options{})
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
