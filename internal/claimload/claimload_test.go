package claimload

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

// fakeAPI answers claims and counts them as warm in /metrics, like a controller.
func fakeAPI(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var warm atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/claims", func(w http.ResponseWriter, _ *http.Request) {
		warm.Add(1)
		fmt.Fprint(w, `{"id":"x","url":"http://127.0.0.1:1"}`)
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "# HELP x\n%s %d\n%s 0\n%s 7\n%s 5\ngo_goroutines 3\n", SeriesWarm, warm.Load(), SeriesWaited, SeriesTarget, SeriesReady)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, &warm
}

func TestModesCountClaimsAndWarmShare(t *testing.T) {
	srv, _ := fakeAPI(t)
	c := NewClient(srv.URL)
	ctx := context.Background()
	for name, run := range map[string]func() (Result, error){
		"paced": func() (Result, error) { return c.Paced(ctx, 5, time.Millisecond) },
		"b2b":   func() (Result, error) { return c.BackToBack(ctx, 5) },
		"burst": func() (Result, error) { return c.Burst(ctx, 3, 5) },
		"rate":  func() (Result, error) { return c.Rate(ctx, 100, 50*time.Millisecond) },
	} {
		r, err := run()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.Claims != 5 || r.Errors != 0 || len(r.Latency) != 5 || r.Warm != 5 || r.WarmShare() != 1 {
			t.Errorf("%s: %+v", name, r)
		}
		if !strings.Contains(r.Line(name), "warm_pct=100.0") {
			t.Errorf("%s: line %q", name, r.Line(name))
		}
	}
}

// More claims at once than the client may hold connections: the rest wait
// for a free one, as they did with net/http's transport, instead of failing
// ("no free connections available to host").
func TestClaimsBeyondTheConnectionCapWait(t *testing.T) {
	srv, _ := fakeAPI(t)
	c := NewClient(srv.URL)
	c.fast.MaxConns = 2
	r, err := c.Burst(context.Background(), 10, 30)
	if err != nil || r.Errors != 0 || len(r.Latency) != 30 {
		t.Fatalf("burst of 30 over 10 clients on 2 connections: %v %s", err, r.Line("burst"))
	}
}

func TestStepsSamplesEverySecond(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 2 s")
	}
	srv, _ := fakeAPI(t)
	c := NewClient(srv.URL)
	steps, err := ParseSteps("10x1s,0x1s")
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	sum, samples, err := c.Steps(context.Background(), steps, 0, 7, &out)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Claims != 10 || sum.Errors != 0 || len(samples) != 2 || sum.MaxTarget != 7 || sum.BackTo < 0 {
		t.Fatalf("summary %+v, samples %+v\n%s", sum, samples, out.String())
	}
	if sum.WarmLast10 != 1 || sum.IdleSandboxSeconds < 9 || sum.IdleSandboxSeconds > 11 {
		t.Errorf("summary %+v", sum)
	}
}

func TestParseSteps(t *testing.T) {
	got, err := ParseSteps("0x5s, 8x30s,0x1m")
	if err != nil || len(got) != 3 || got[1] != (Step{8, 30 * time.Second}) || got[2].For != time.Minute {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range []string{"", "8", "-1x1s", "ax1s", "1x0s", "1xfoo"} {
		if _, err := ParseSteps(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestQuantile(t *testing.T) {
	d := []time.Duration{5, 1, 4, 2, 3}
	if Quantile(d, .5) != 3 || Quantile(d, .99) != 5 || Quantile(d, 0) != 1 || Quantile(nil, .5) != 0 {
		t.Fatal(Quantile(d, .5), Quantile(d, .99))
	}
}

func TestPoolCPUFindsAProcessByStateDir(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(dir + "/held")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// This process holds a file under dir, but PoolCPU skips its caller:
	// nothing else names dir, so no pool process is found.
	_, pids, err := PoolCPU(dir, 0)
	if err != nil || len(pids) != 0 {
		t.Fatalf("pids %v, err %v", pids, err)
	}
	_, pids, err = PoolCPU(dir, os.Getppid())
	if err != nil || len(pids) == 0 {
		t.Fatalf("the parent's tree: pids %v, err %v", pids, err)
	}
}

// floorHelperEnv makes the test binary StartFloorServer's child.
const floorHelperEnv = "CLAIMLOAD_TEST_FLOOR_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(floorHelperEnv) != "" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			os.Exit(1)
		}
		fmt.Println(ln.Addr())
		_ = ServeFloor(ln)
		os.Exit(1)
	}
	testkit.Main(m)
}

func TestFloorInAChildProcessBackToBackAndPaced(t *testing.T) {
	t.Setenv(floorHelperEnv, "1")
	base, stop, err := StartFloorServer(context.Background(), os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	b2b, err := Floor(context.Background(), base, 20, 0)
	if err != nil || len(b2b.Latency) != 20 || b2b.Errors != 0 {
		t.Fatalf("back to back: %+v %v", b2b, err)
	}
	const gap = 20 * time.Millisecond
	paced, err := Floor(context.Background(), base, 4, gap)
	if err != nil || len(paced.Latency) != 4 || paced.Errors != 0 {
		t.Fatalf("paced: %+v %v", paced, err)
	}
	if paced.Elapsed < 3*gap {
		t.Errorf("4 round trips %s apart took %s", gap, paced.Elapsed)
	}
	burst, err := FloorBurst(context.Background(), base, 5, 12, 3, true)
	if err != nil || len(burst.Latency) != 36 || burst.Errors != 0 {
		t.Fatalf("bursts: %d round trips, %d errors (%s), %v; want 3 bursts of 12", len(burst.Latency), burst.Errors, burst.FirstErr, err)
	}
}

// Connect opens one connection per client before a burst, and the burst
// then opens almost none: its latencies hold no handshakes (Go's transport
// hands a connection back to its idle set a moment after the body's end, so
// a client quick to claim again may still dial one).
func TestConnectOpensTheClientsConnectionsBeforeABurst(t *testing.T) {
	var opened atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/claims" {
			_, _ = io.WriteString(w, `{"id":"sb-1"}`)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	c := NewClient(srv.URL)
	if err := c.Connect(context.Background(), 8, "/healthz"); err != nil {
		t.Fatal(err)
	}
	// Counted by the client as each dial returns: the server counts a
	// connection when its accept loop gets to it, which on a loaded machine
	// can be after Connect returned for one Connect dialed but did not use
	// (it lost the race to a freed connection), and its count would then
	// land in the burst's.
	dialed := c.dials.Load
	if got := dialed(); got < 8 {
		t.Fatalf("Connect(8) opened %d connections", got)
	}
	before := dialed()
	rec := &recorder{}
	c.burst(context.Background(), rec, 8, 40, c.Claim)
	if rec.res.Errors != 0 || len(rec.res.Latency) != 40 {
		t.Fatalf("burst: %+v", rec.res)
	}
	if extra := dialed() - before; extra >= 4 {
		t.Errorf("the burst opened %d new connections after Connect", extra)
	}
	// The server saw each of them, no other.
	testkit.Eventually(t, 10*time.Second, "the server to accept what the client dialed", func() bool {
		return opened.Load() == dialed()
	})
}

// PoolCPU counts a live process finer than /proc/<pid>/stat's 10 ms ticks.
func TestPoolCPUCountsFinerThanTicks(t *testing.T) {
	cmd := exec.Command("sh", "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; exec sleep 30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var ms float64
	testkit.Eventually(t, 20*time.Second, "the child's busy loop counted", func() bool {
		var err error
		ms, _, err = PoolCPU(t.TempDir(), cmd.Process.Pid)
		return err == nil && ms >= 20
	})
	if ns := int64(ms * 1e6); ns%10_000_000 == 0 {
		t.Errorf("PoolCPU = %v ms: whole ticks, not the threads' run time", ms)
	}
}

// Alternate claims from two APIs in turn, n from each.
func TestAlternateClaimsFromTwoAPIsInTurn(t *testing.T) {
	a, warmA := fakeAPI(t)
	b, warmB := fakeAPI(t)
	ra, rb, err := Alternate(context.Background(), NewClient(a.URL), NewClient(b.URL), 4, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(ra.Latency) != 4 || len(rb.Latency) != 4 || warmA.Load() != 4 || warmB.Load() != 4 {
		t.Fatalf("a: %d claims (%d served), b: %d (%d served); want 4 each", len(ra.Latency), warmA.Load(), len(rb.Latency), warmB.Load())
	}
}

// With CPUPid, a run reads that process's CPU around its claims alone, and
// with Spans it writes their span on CLOCK_MONOTONIC.
func TestBurstReadsAProcesssCPUAndSpan(t *testing.T) {
	srv, _ := fakeAPI(t)
	c := NewClient(srv.URL)
	var spans strings.Builder
	c.CPUPid, c.Spans = os.Getpid(), &spans // the fake API runs in this process
	r, err := c.Burst(context.Background(), 4, 200)
	if err != nil {
		t.Fatal(err)
	}
	if r.CPU <= 0 || !strings.Contains(r.Line("burst"), " cpu_ms_per_claim=") {
		t.Errorf("CPU %v, line %q", r.CPU, r.Line("burst"))
	}
	var a, b float64
	if n, err := fmt.Sscanf(spans.String(), "%f %f\n", &a, &b); n != 2 || err != nil || a <= 0 || b < a || b-a > r.Elapsed.Seconds()+1 {
		t.Errorf("span %q (%v), elapsed %v", spans.String(), err, r.Elapsed)
	}
}

func TestMachineReadsProcStat(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc/stat is Linux's")
	}
	a, err := ReadCPUTimes()
	if err != nil {
		t.Fatal(err)
	}
	if a.Total <= 0 || a.Idle > a.Total || a.Steal > a.Total {
		t.Fatalf("implausible /proc/stat times: %+v", a)
	}
	Speed() // a CPU task: ticks pass meanwhile
	b, err := ReadCPUTimes()
	if err != nil {
		t.Fatal(err)
	}
	if b.Total <= a.Total || b.Steal < a.Steal {
		t.Fatalf("times did not move forward: %+v then %+v", a, b)
	}
}
