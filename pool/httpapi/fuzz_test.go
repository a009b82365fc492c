package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
	"github.com/sandboxpool/sandboxpool/pool/pooltest"
)

// fuzzPool is a controller over the in-memory fakes, without loops, holding
// one ready sandbox, and its API; the target is 3 of at most 10.
type fuzzPool struct {
	ctrl *pool.Controller
	be   *pooltest.Backend
	st   *pooltest.Store
	api  *httpapi.API
	sb   pool.Ref
}

const fuzzTarget, fuzzMaxSize = 3, 10

func newFuzzPool(t *testing.T) *fuzzPool {
	t.Helper()
	clk := clockwork.NewRealClock()
	p := &fuzzPool{be: pooltest.NewBackend(clk), st: pooltest.NewStore()}
	cfg := pool.DefaultConfig()
	cfg.Pool, cfg.Size, cfg.MaxSize = "fuzz", fuzzTarget, fuzzMaxSize
	ctx := context.Background()
	if err := p.st.SetTarget(ctx, fuzzTarget); err != nil {
		t.Fatal(err)
	}
	var err error
	if p.sb, err = p.be.Create(ctx, cfg.TTL); err != nil {
		t.Fatal(err)
	}
	if err := p.st.Put(ctx, p.sb); err != nil {
		t.Fatal(err)
	}
	p.ctrl, err = pool.New(pool.Options{Config: cfg, Backend: p.be, Store: p.st, Clock: clk, Checker: p.be.Checker})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.ctrl.Close)
	p.api = httpapi.New(p.ctrl, httpapi.Options{})
	return p
}

// serve answers one request; an answer that takes longer than a few seconds
// (a claim waiting for nothing, a lock) fails the input rather than hanging
// the fuzzer.
func (p *fuzzPool) serve(t *testing.T, req *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() { defer close(done); p.api.ServeHTTP(rec, req) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s %s: no answer within 10s", req.Method, req.URL)
	}
	return rec
}

// stored is the store now.
func (p *fuzzPool) stored(t *testing.T) pool.Stored {
	t.Helper()
	s, err := p.st.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// wantJSONError fails unless the answer is exactly {"error":"..."} in one line.
func wantJSONError(t *testing.T, rec *httptest.ResponseRecorder) string {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error answer Content-Type %q", ct)
	}
	var ev map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &ev); err != nil {
		t.Fatalf("error body %q is not JSON: %v", rec.Body.Bytes(), err)
	}
	msg, ok := ev["error"].(string)
	if !ok || len(ev) != 1 || msg == "" {
		t.Fatalf("error body %s: want exactly {\"error\":\"...\"}", rec.Body.Bytes())
	}
	return msg
}

// wantUnchanged fails unless the pool is as newFuzzPool left it.
func (p *fuzzPool) wantUnchanged(t *testing.T) {
	t.Helper()
	s := p.stored(t)
	if s.Target != fuzzTarget || p.ctrl.Target() != fuzzTarget {
		t.Fatalf("target changed: store %d, controller %d", s.Target, p.ctrl.Target())
	}
	if len(s.Entries) != 1 || s.Entries[0].ID != p.sb.ID || s.Entries[0].Claimed() {
		t.Fatalf("entries changed: %+v", s.Entries)
	}
	if live := p.be.Live(); len(live) != 1 {
		t.Fatalf("live sandboxes changed: %v", live)
	}
}

// FuzzResizeBody: any body of PUT /v1/pool/size answers 200 with the pool
// JSON and the new target, or 400 with a JSON error and nothing changed.
func FuzzResizeBody(f *testing.F) {
	for _, s := range []string{
		`{"size":5}`, `{"size":0}`, `{"size":10}`, `{"size":11}`, `{"size":-1}`, `{"size":null}`, `{}`, ``, `null`,
		`{"size":"5"}`, `{"size":5.0}`, `{"size":1e1}`, `{"size":5,"extra":1}`, `{"SIZE":4}`, `{"size":5}{}`,
		`{"size":5} `, `{"size":5}x`, `[5]`, `5`, `{"size":9223372036854775808}`, `{"size":2,"size":7}`, "\xef\xbb\xbf{\"size\":1}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		p := newFuzzPool(t)
		rec := p.serve(t, httptest.NewRequest(http.MethodPut, "/v1/pool/size", bytes.NewReader(body)))
		switch rec.Code {
		case http.StatusOK:
			var v httpapi.PoolView
			if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
				t.Fatalf("200 body %q: %v", rec.Body.Bytes(), err)
			}
			s := p.stored(t)
			if !s.HasTarget || s.Target != v.Target || p.ctrl.Target() != v.Target || v.Target < 0 || v.Target > fuzzMaxSize {
				t.Fatalf("body %q: answered target %d, store %d, controller %d", body, v.Target, s.Target, p.ctrl.Target())
			}
			// What was taken is one JSON object with no field but size
			// (matched without case, as encoding/json does), the last one
			// being the new target.
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(body, &obj); err != nil {
				t.Fatalf("body %q taken but it is not a JSON object: %v", body, err)
			}
			for k := range obj {
				if !strings.EqualFold(k, "size") {
					t.Fatalf("body %q taken with the field %q", body, k)
				}
			}
		case http.StatusBadRequest:
			wantJSONError(t, rec)
			p.wantUnchanged(t)
			// The canonical form of a size in range is never refused.
			var n int
			if _, err := fmt.Sscanf(string(body), `{"size":%d}`, &n); err == nil && string(body) == fmt.Sprintf(`{"size":%d}`, n) && n >= 0 && n <= fuzzMaxSize {
				t.Fatalf("body %q refused: %s", body, rec.Body.Bytes())
			}
		default:
			t.Fatalf("body %q: status %d %s", body, rec.Code, rec.Body.Bytes())
		}
	})
}

// expectedClaim says whether a claim query is valid, independently of the
// API's code: well-formed, only check_health and timeout, each (its last
// value) a bool or a duration in (0, 5m].
func expectedClaim(raw string) bool {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return false
	}
	for k, vs := range q {
		v := vs[len(vs)-1]
		switch k {
		case "check_health":
			switch strings.ToLower(v) {
			case "1", "t", "true", "yes", "y", "on", "0", "f", "false", "no", "n", "off":
			default:
				return false
			}
		case "timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 || d > httpapi.MaxClaimTimeout {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// FuzzClaimQuery: any query of POST /v1/claims and GET /claim answers 200
// with the one ready sandbox when it is valid, or 400 with a JSON error and
// nothing claimed when it is not.
func FuzzClaimQuery(f *testing.F) {
	for _, s := range []string{
		"", "check_health=false", "timeout=30s", "timeout=0", "timeout=-1s", "timeout=6m", "timeout=5m", "timeout=1ms",
		"check_health=maybe", "check_health=FALSE&timeout=2s", "other=1", "timeout=1s&timeout=x", "timeout=x&timeout=1s",
		"timeout=%zz", "timeout=1s;check_health=false", "check_health", "=", "&&", "timeout=1e3s", "check_health=%00",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, raw string, seed bool) {
		method, path := http.MethodPost, "/v1/claims"
		if seed {
			method, path = http.MethodGet, "/claim"
		}
		u, err := url.ParseRequestURI(path + "?" + raw)
		if err != nil || u.Path != path {
			return // not a request line a server would pass on
		}
		req := httptest.NewRequest(method, "/", nil)
		req.URL = u
		req.RequestURI = u.RequestURI()
		p := newFuzzPool(t)
		rec := p.serve(t, req)
		want := expectedClaim(u.RawQuery)
		switch rec.Code {
		case http.StatusOK:
			if !want {
				t.Fatalf("query %q was taken", u.RawQuery)
			}
			var gotURL string
			if seed {
				if err := json.Unmarshal(rec.Body.Bytes(), &gotURL); err != nil {
					t.Fatalf("200 body %q: %v", rec.Body.Bytes(), err)
				}
			} else {
				var v httpapi.ClaimView
				if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
					t.Fatalf("200 body %q: %v", rec.Body.Bytes(), err)
				}
				gotURL = v.URL
			}
			if gotURL != p.sb.URL {
				t.Fatalf("claimed %q, want %q", gotURL, p.sb.URL)
			}
			if s := p.stored(t); len(s.Entries) != 1 || !s.Entries[0].Claimed() {
				t.Fatalf("after a claim the store holds %+v", s.Entries)
			}
		case http.StatusBadRequest:
			msg := wantJSONError(t, rec)
			if want {
				t.Fatalf("query %q refused: %s", u.RawQuery, msg)
			}
			p.wantUnchanged(t)
		default:
			t.Fatalf("query %q: status %d %s", u.RawQuery, rec.Code, rec.Body.Bytes())
		}
	})
}

// TestClaimMalformedQueryRefused: a query that does not parse is refused,
// not claimed with the defaults (found by FuzzClaimQuery: r.URL.Query()
// silently dropped "timeout=%zz", and a claim ran with the 60s default).
func TestClaimMalformedQueryRefused(t *testing.T) {
	for _, raw := range []string{"timeout=%zz", "timeout=1s;check_health=false", "check_health=%G0"} {
		for _, path := range []string{"/v1/claims", "/claim"} {
			method := http.MethodPost
			if path == "/claim" {
				method = http.MethodGet
			}
			p := newFuzzPool(t)
			rec := p.serve(t, httptest.NewRequest(method, path+"?"+raw, nil))
			if rec.Code != http.StatusBadRequest {
				t.Fatalf("%s %s?%s: status %d %s, want 400", method, path, raw, rec.Code, rec.Body.Bytes())
			}
			if msg := wantJSONError(t, rec); !strings.Contains(msg, "query") {
				t.Errorf("error %q does not say the query is bad", msg)
			}
			p.wantUnchanged(t)
		}
	}
}
