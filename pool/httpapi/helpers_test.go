package httpapi_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
	"github.com/sandboxpool/sandboxpool/pool/local"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

func TestMain(m *testing.M) {
	local.MaybeRunChild()                            // the local backend re-executes this binary
	maybeRunHTTPChild()                              // tests re-execute it as another user
	testkit.Main(testkit.Teardown(m, teardownBench)) // what benchmarks share stops before goleak looks
}

// env is one controller served by the API on a real loopback listener.
type env struct {
	t     testing.TB
	ctrl  *pool.Controller
	api   *httpapi.API
	be    *pooltest.Backend
	st    *pooltest.Store
	cst   *countStore // st, counting takes
	clk   clockwork.Clock
	base  string // http://127.0.0.1:PORT
	http  *http.Client
	tr    *http.Transport
	logs  *testkit.SyncBuffer
	stop  context.CancelFunc // stops the server (and the loops)
	errc  <-chan error
	token string
}

type envOpts struct {
	size        int
	api         httpapi.Options
	clock       clockwork.Clock                      // default real
	loops       bool                                 // run the controller's maintenance loops (backfill)
	fill        bool                                 // fill to size before serving
	backend     pool.Backend                         // default the pooltest backend
	checker     func(*pooltest.Backend) pool.Checker // default the pooltest backend's checker
	cfg         func(*pool.Config)
	createDelay time.Duration // how long the pooltest backend takes to create one
	poll        time.Duration // how often the controller re-reads the store (default 20ms)
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	e := &env{t: t, clk: o.clock, logs: &testkit.SyncBuffer{}, token: o.api.Token}
	if e.clk == nil {
		e.clk = clockwork.NewRealClock()
	}
	e.be = pooltest.NewBackend(e.clk)
	e.be.CreateDelay = o.createDelay
	e.st = pooltest.NewStore()
	e.cst = &countStore{Store: e.st}
	cfg := pool.DefaultConfig()
	cfg.Pool = "test"
	cfg.Size, cfg.SizeSet = o.size, true
	cfg.ClaimTimeout = 5 * time.Second
	cfg.HealthFresh = 0 // these tests watch each claim's own probe
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	var be pool.Backend = e.be
	if o.backend != nil {
		be = o.backend
	}
	var checker pool.Checker = e.be.Checker
	if o.checker != nil {
		checker = o.checker(e.be)
	}
	if o.poll == 0 {
		o.poll = 20 * time.Millisecond
	}
	ctrl, err := pool.New(pool.Options{Config: cfg, Backend: be, Store: e.cst, Clock: e.clk,
		Checker: checker, StorePollEvery: o.poll})
	if err != nil {
		t.Fatal(err)
	}
	e.ctrl = ctrl
	ctx, cancel := context.WithCancel(context.Background())
	var loops sync.WaitGroup
	if o.fill {
		if err := ctrl.Resize(ctx, o.size); err != nil {
			t.Fatal(err)
		}
		if err := ctrl.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		err := ctrl.WaitAtTarget(wctx, nil)
		wcancel()
		if err != nil {
			t.Fatal("fill:", err)
		}
	}
	if o.loops {
		loops.Add(1)
		go func() { defer loops.Done(); _ = ctrl.Serve(ctx, false) }()
	}
	if o.api.Logger == nil {
		o.api.Logger = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	e.api = httpapi.New(ctrl, o.api)
	addr, errc, err := httpapi.Serve(ctx, "127.0.0.1:0", e.api)
	if err != nil {
		t.Fatal(err)
	}
	e.base, e.errc, e.stop = "http://"+addr, errc, cancel
	e.tr = &http.Transport{MaxIdleConnsPerHost: 50}
	e.http = &http.Client{Transport: e.tr}
	t.Cleanup(func() {
		e.tr.CloseIdleConnections() // or the server waits for connections it never got a request on
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("the server did not stop within 5s")
		}
		loops.Wait()
		ctrl.Close()
		e.tr.CloseIdleConnections()
	})
	return e
}

// response is one answer, body read.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// errorText is the "error" of a JSON error answer; it fails the test when
// the body is not one.
func (r response) errorText(t testing.TB) string {
	t.Helper()
	var ev map[string]any
	if err := json.Unmarshal(r.body, &ev); err != nil {
		t.Fatalf("error body %q is not JSON: %v", r.body, err)
	}
	msg, ok := ev["error"].(string)
	if !ok || len(ev) != 1 || msg == "" {
		t.Fatalf("error body %s: want exactly {\"error\":\"...\"}", r.body)
	}
	return msg
}

func (e *env) do(method, path, body string, hdr ...string) response {
	e.t.Helper()
	return e.doCtx(context.Background(), method, path, body, hdr...)
}

// doCtx sends a request; hdr is name, value pairs. With a token set on the
// env, the right Authorization goes along unless hdr sets one.
func (e *env) doCtx(ctx context.Context, method, path, body string, hdr ...string) response {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if e.token != "" {
		req.Header.Set("Authorization", "Bearer "+e.token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := e.http.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read: %v", method, path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

func (e *env) client() *httpapi.Client {
	return &httpapi.Client{BaseURL: e.base, Token: e.token, HTTP: e.http}
}

// countStore counts Take calls.
type countStore struct {
	*pooltest.Store
	takes atomic.Int64
}

func (s *countStore) Take(ctx context.Context, r pool.TakeRequest) (pool.Entry, []pool.Entry, bool, error) {
	defer s.takes.Add(1)
	return s.Store.Take(ctx, r)
}
