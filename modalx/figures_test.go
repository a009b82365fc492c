package modalx

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

// TestModalFigures takes the Modal backend's figures on the fake control
// plane and prints them as README tables:
//
//	SANDBOXPOOL_FIGURES=1 go test -run TestModalFigures -v ./modalx/
//
// RPCs of a warm claim (on its critical path, and in all with the work it
// starts in the background) and of a steady maintenance pass, at 3, 100
// and 1,000 sandboxes (SANDBOXPOOL_FIGURES_SIZES, e.g. "3,100"); filling 100
// when each creation takes 1s; claims through POST /v1/claims when every
// RPC takes 20ms, one at a time and 20 at once.
func TestModalFigures(t *testing.T) {
	if os.Getenv("SANDBOXPOOL_FIGURES") == "" {
		t.Skip("figures: set SANDBOXPOOL_FIGURES=1 (creates 1,100 fake sandboxes)")
	}
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	sizes := []int{3, 100, 1000}
	if env := os.Getenv("SANDBOXPOOL_FIGURES_SIZES"); env != "" {
		sizes = nil
		for _, s := range strings.Split(env, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 1 {
				t.Fatalf("SANDBOXPOOL_FIGURES_SIZES=%q", env)
			}
			sizes = append(sizes, n)
		}
	}
	var lines []string
	say := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }
	say("| sandboxes | warm claim: RPCs on its critical path | warm claim: RPCs in all | steady pass | pass by RPC |")
	say("|---:|---:|---:|---:|---|")
	var claimCrit []int
	var passes []int
	var critLast, allLast map[string]int
	for _, n := range sizes {
		crit, all, pass := rpcFigures(t, f, n)
		claimCrit = append(claimCrit, sum(crit))
		passes = append(passes, sum(pass))
		critLast, allLast = crit, all
		say("| %d | %d | %d | %d | %s |", n, sum(crit), sum(all), sum(pass), fakemodal.FormatCounts(pass))
	}
	say("")
	say("claim, critical path: %s; in all: %s", fakemodal.FormatCounts(critLast), fakemodal.FormatCounts(allLast))
	say("")
	fill := fillFigure(t, f, 100, time.Second)
	say("fill 100 with creations of 1s (--max-creating 20): %s", fill.Round(10*time.Millisecond))
	say("")
	lat := latencyFigures(t, f, 20*time.Millisecond)
	say("%s", lat)
	for _, l := range lines {
		t.Log(l)
	}
	for i := range sizes {
		if claimCrit[i] > 2 {
			t.Errorf("a warm claim at %d makes %d RPCs on its critical path, want at most 2", sizes[i], claimCrit[i])
		}
		if claimCrit[i] != claimCrit[0] {
			t.Errorf("a claim at %d makes %d RPCs on its critical path, at %d %d", sizes[i], claimCrit[i], sizes[0], claimCrit[0])
		}
	}
	// The target is 6s (5 waves of 20 creations of 1s); a loaded machine
	// adds to each creation's own work, so only a fill far off fails.
	if fill > 8*time.Second {
		t.Errorf("filling 100 took %s, want about 6s at most", fill)
	}
}

func figuresConfig(name string, n int) pool.Config {
	cfg := pool.DefaultConfig()
	cfg.Pool, cfg.Size, cfg.MaxSize = name, n, max(n, 1000)
	cfg.TTL, cfg.UseDuration = 10*time.Minute, time.Minute
	cfg.HealthEvery, cfg.MaintainEvery = time.Hour, time.Hour
	cfg.ClaimTimeout = 10 * time.Second
	return cfg
}

func figuresChecker(t *testing.T, f *fakemodal.Server) pool.Checker {
	tr := &http.Transport{TLSClientConfig: f.TLSConfig(), MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	return pool.NewHTTPChecker(pool.NewHealthClient(tr))
}

// fillStore creates n sandboxes, 50 at a time, and pools them.
func fillStore(t *testing.T, b *Backend, s *Store, n int) {
	t.Helper()
	ctx := ctxT(t)
	refs := make([]pool.Ref, n)
	sem := make(chan struct{}, 50)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			r, err := b.Create(ctx, 10*time.Minute)
			if err != nil {
				t.Error(err)
			}
			refs[i] = r
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	slices.SortFunc(refs, func(a, b pool.Ref) int { return a.CreatedAt.Compare(b.CreatedAt) })
	for _, r := range refs {
		if err := s.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
}

// quiet waits until the background work of a claim is done: tags written
// and the reservations topped up again.
func quiet(t *testing.T, s *Store, reserved int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s.c.mu.Lock()
		tags := len(s.c.tagQueue)
		s.c.mu.Unlock()
		if tags == 0 && reservedCount(s) >= reserved {
			time.Sleep(50 * time.Millisecond)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("background work not done after 20s: %d tags, %d reserved", tags, reservedCount(s))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rpcFigures counts a warm claim and a steady pass on a full pool of n held
// by this process (the lease holder, as a controller is).
func rpcFigures(t *testing.T, f *fakemodal.Server, n int) (crit, all, pass map[string]int) {
	name := fmt.Sprintf("fig-%d", n)
	b, s := open(t, Options{Pool: name, LeaseHeartbeat: 2 * time.Second})
	fillStore(t, b, s, n)
	ctx := ctxT(t)
	c, err := pool.New(pool.Options{Config: figuresConfig(name, n), Backend: b, Store: s, Checker: figuresChecker(t, f)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l, err := s.AcquireLease(ctx, pool.LeaseRecord{Host: "figures", Pid: n, Role: pool.RoleController})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	want := min(maxReserved, n/2)
	for range 2 {
		if err := c.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitReserved(t, s, want)
	quiet(t, s, want)
	f.ResetCounts()
	if err := c.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	pass = f.Counts()
	f.ResetCounts()
	cctx, counter := withCallCounter(ctx)
	if _, err := c.Claim(cctx, pool.ClaimOptions{CheckHealth: true, By: "figures"}); err != nil {
		t.Fatal(err)
	}
	crit = counter.counts()
	quiet(t, s, want)
	all = f.Counts()
	return crit, all, pass
}

// fillFigure times a controller filling an empty pool of n when each
// creation takes delay on the control plane.
func fillFigure(t *testing.T, f *fakemodal.Server, n int, delay time.Duration) time.Duration {
	name := fmt.Sprintf("fill-%d", n)
	b, s := open(t, Options{Pool: name, LeaseHeartbeat: 2 * time.Second})
	if _, err := b.Create(ctxT(t), time.Minute); err != nil { // the image is built once, before
		t.Fatal(err)
	}
	f.SetCreateDelay(delay)
	defer f.SetCreateDelay(0)
	cfg := figuresConfig(name, n)
	cfg.MaintainEvery = 30 * time.Second
	c, err := pool.New(pool.Options{Config: cfg, Backend: b, Store: s, Checker: figuresChecker(t, f)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	if os.Getenv("FIG_DEBUG") != "" {
		c.Observe(func(e pool.Event) {
			if e.Kind == pool.EventCreated || e.Kind == pool.EventCreating || e.Kind == pool.EventLeaseAcquired {
				t.Logf("%6.3f %s %s", time.Since(start).Seconds(), e.Kind, e.Duration.Round(time.Millisecond))
			}
		})
	}
	go func() { _ = c.Serve(ctx, false) }()
	if !testkit.Until(time.Minute, func() bool { return c.Snapshot().Counts[pool.StateReady] >= n }) {
		t.Fatalf("fill %d: %d ready after a minute", n, c.Snapshot().Counts[pool.StateReady])
	}
	return time.Since(start)
}

// latencyFigures claims through POST /v1/claims of a controller serving a
// pool of 30 when every RPC takes rpc.
func latencyFigures(t *testing.T, f *fakemodal.Server, rpc time.Duration) string {
	name := "latency"
	b, s := open(t, Options{Pool: name, LeaseHeartbeat: 2 * time.Second})
	fillStore(t, b, s, 30)
	cfg := figuresConfig(name, 30)
	cfg.MaintainEvery = 30 * time.Second
	cfg.HealthEvery = 5 * time.Second
	c, err := pool.New(pool.Options{Config: cfg, Backend: b, Store: s, Checker: figuresChecker(t, f)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.Serve(ctx, false) }()
	srv := httptest.NewServer(httpapi.New(c, httpapi.Options{}))
	defer srv.Close()
	hc := &http.Client{Timeout: 30 * time.Second}
	claim := func(check bool) (httpapi.ClaimView, time.Duration, error) {
		start := time.Now()
		resp, err := hc.Post(srv.URL+"/v1/claims?check_health="+strconv.FormatBool(check), "", nil)
		if err != nil {
			return httpapi.ClaimView{}, 0, err
		}
		defer resp.Body.Close()
		var v httpapi.ClaimView
		if resp.StatusCode != 200 {
			return v, 0, fmt.Errorf("POST /v1/claims: %d", resp.StatusCode)
		}
		err = json.NewDecoder(resp.Body).Decode(&v)
		return v, time.Since(start), err
	}
	waitReserved(t, s, maxReserved)
	quiet(t, s, maxReserved)
	f.SetLatency(rpc)
	defer f.SetLatency(0)
	var out []string
	for _, check := range []bool{true, false} {
		var lat []time.Duration
		for range 10 {
			_, d, err := claim(check)
			if err != nil {
				t.Fatal(err)
			}
			lat = append(lat, d)
			time.Sleep(400 * time.Millisecond) // a claim's backfill and refill happen meanwhile
		}
		slices.Sort(lat)
		out = append(out, fmt.Sprintf("warm claim via POST /v1/claims (check_health=%v) at %s per RPC, 10 claims 400ms apart: p50 %s, max %s",
			check, rpc, lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond)))
	}
	// 20 at once: all served, all distinct.
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]bool{}
	var lat []time.Duration
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, d, err := claim(true)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("one of 20 concurrent claims: %v", err)
				return
			}
			if got[v.ID] {
				t.Errorf("%s handed out twice", v.ID)
			}
			got[v.ID] = true
			lat = append(lat, d)
		}()
	}
	wg.Wait()
	slices.Sort(lat)
	if len(lat) > 0 {
		out = append(out, fmt.Sprintf("20 concurrent claims at %s per RPC: %d served, %d distinct, p50 %s, max %s",
			rpc, len(lat), len(got), lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond)))
	}
	return strings.Join(out, "\n")
}
