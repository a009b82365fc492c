package httpapi_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/filestore"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
	"github.com/sandboxpool/sandboxpool/pool/local"
)

// localEnv is the API over the real local backend and file store.
type localEnv struct {
	ctrl *pool.Controller
	be   *local.Backend
	st   *filestore.Store
	base string
	http *http.Client
}

// newLocalEnv starts a controller (with its loops when loops) over real
// local sandboxes and serves its API. Everything it starts, sandboxes
// included, is gone after the test.
func newLocalEnv(tb testing.TB, size int, loops bool, cfgFn func(*pool.Config)) *localEnv {
	tb.Helper()
	dir := tb.TempDir()
	e, stop, err := startLocal(dir, size, loops, cfgFn)
	if stop != nil {
		tb.Cleanup(func() {
			if err := stop(); err != nil {
				tb.Error(err)
			}
		})
	}
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

// startLocal is newLocalEnv without a testing.TB, for a benchmark pool shared
// by all of a benchmark's runs: stop (set even on error) tears it down.
func startLocal(dir string, size int, loops bool, cfgFn func(*pool.Config)) (_ *localEnv, stop func() error, _ error) {
	be, err := local.New(local.Options{Pool: "api", StateDir: dir, TermGrace: 500 * time.Millisecond})
	if err != nil {
		return nil, nil, err
	}
	st, err := filestore.Open(dir, "api")
	if err != nil {
		return nil, nil, err
	}
	// The health checks' client is ours, so that its idle connections can be
	// closed at the end (goleak).
	healthTr := &http.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true}
	cfg := pool.DefaultConfig()
	cfg.Pool = "api"
	cfg.Size, cfg.SizeSet = size, true
	cfg.MaxSize = max(size, 10)
	cfg.MaxCreating = 50
	if cfgFn != nil {
		cfgFn(&cfg)
	}
	ctrl, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: st,
		Checker: pool.NewHTTPChecker(pool.NewHealthClient(healthTr)), StorePollEvery: 50 * time.Millisecond})
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	addr, errc, err := httpapi.Serve(ctx, "127.0.0.1:0", httpapi.New(ctrl, httpapi.Options{}))
	if err != nil {
		cancel()
		ctrl.Close()
		return nil, nil, err
	}
	clientTr := &http.Transport{MaxIdleConnsPerHost: 64}
	e := &localEnv{ctrl: ctrl, be: be, st: st, base: "http://" + addr, http: &http.Client{Transport: clientTr}}
	stop = func() error {
		clientTr.CloseIdleConnections()
		cancel()
		<-errc
		wg.Wait()
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		_, err := ctrl.Cleanup(cctx)
		ctrl.Close()
		_ = st.Close()
		refs, _ := be.List(cctx)
		for _, r := range refs { // whatever a failed test left
			_ = be.Terminate(cctx, r.ID)
		}
		healthTr.CloseIdleConnections()
		return err
	}
	if loops {
		wg.Add(1)
		go func() { defer wg.Done(); _ = ctrl.Serve(ctx, false) }()
	}
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel()
	for !loops && ctrl.Snapshot().Counts[pool.StateReady] < size && wctx.Err() == nil {
		// No loop runs passes: each one starts at most MaxCreating creations.
		if err := ctrl.Maintain(wctx); err != nil {
			return nil, stop, err
		}
		ctrl.WaitIdle(wctx)
	}
	if err := ctrl.WaitAtTarget(wctx, nil); err != nil {
		return nil, stop, fmt.Errorf("fill %d local sandboxes: %w", size, err)
	}
	return e, stop, nil
}

func (e *localEnv) do(tb testing.TB, method, path, body string) response {
	tb.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, e.base+path, rd)
	resp, err := e.http.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

func (e *localEnv) get(tb testing.TB, url string) (int, string) {
	tb.Helper()
	return testkit.Get(tb, e.http, url)
}

func TestLocalBackendEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	e := newLocalEnv(t, 2, true, nil)

	// The seed's way: GET /claim, then GET the sandbox.
	r := e.do(t, "GET", "/claim", "")
	if r.status != 200 {
		t.Fatalf("GET /claim: %d %s", r.status, r.body)
	}
	var url string
	r.json(t, &url)
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("claimed URL %q", url)
	}
	if status, body := e.get(t, url); status != 200 || !strings.Contains(body, "<") {
		t.Fatalf("GET the sandbox: %d %.200s", status, body)
	}

	// The JSON way.
	r = e.do(t, "POST", "/v1/claims?timeout=30s", "")
	if r.status != 200 {
		t.Fatalf("POST /v1/claims: %d %s", r.status, r.body)
	}
	var c httpapi.ClaimView
	r.json(t, &c)
	if status, _ := e.get(t, c.URL); status != 200 || c.SecondsLeft < 290 {
		t.Fatalf("claimed %+v answers %d", c, status)
	}

	// Backfill: two more get ready, the claimed ones stay recorded.
	testkit.Eventually(t, 30*time.Second, "backfill to 2 ready", func() bool {
		return e.ctrl.Snapshot().Counts[pool.StateReady] == 2
	})
	var v httpapi.PoolView
	e.do(t, "GET", "/v1/pool", "").json(t, &v)
	if v.Backend != "local" || v.Pool != "api" || v.Counts.Claimed != 2 || v.Counts.Ready != 2 || v.Target != 2 {
		t.Fatalf("pool %+v", v)
	}
	for _, sb := range v.Sandboxes {
		if sb.State == pool.StateReady && (!sb.Health.OK || sb.Health.Status != 200 || sb.Health.LatencyMS <= 0) {
			t.Errorf("ready sandbox health %+v", sb.Health)
		}
	}

	// Terminate the claimed one: its process goes.
	if r := e.do(t, "DELETE", "/v1/sandboxes/"+c.ID, ""); r.status != 200 {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	refs, err := e.be.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(refs, func(r pool.Ref) bool { return r.ID == c.ID }) {
		t.Fatalf("%s still runs after DELETE", c.ID)
	}
	if r := e.do(t, "DELETE", "/v1/sandboxes/"+c.ID, ""); r.status != 404 {
		t.Fatalf("DELETE again: %d %s", r.status, r.body)
	}

	// Resize to 0 and run a pass: the ready ones go.
	if r := e.do(t, "PUT", "/v1/pool/size", `{"size":0}`); r.status != 200 {
		t.Fatalf("PUT size: %d %s", r.status, r.body)
	}
	if r := e.do(t, "POST", "/v1/maintain", ""); r.status != 200 {
		t.Fatalf("POST maintain: %d %s", r.status, r.body)
	}
	testkit.Eventually(t, 30*time.Second, "no ready sandbox at size 0", func() bool {
		return e.ctrl.Snapshot().Counts[pool.StateReady] == 0
	})
	if stored, err := e.st.Load(context.Background()); err != nil || stored.Target != 0 || len(stored.Pooled()) != 0 {
		t.Fatalf("store after resize to 0: %+v %v", stored, err)
	}
	if r := e.do(t, "POST", "/v1/claims?timeout=100ms", ""); r.status != 503 {
		t.Fatalf("claim from an empty local pool: %d %s", r.status, r.body)
	}
}
