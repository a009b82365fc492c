package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

func TestSeedClaim(t *testing.T) {
	e := newEnv(t, envOpts{size: 3, fill: true})
	for _, q := range []string{"", "?check_health=false", "?check_health=true", "?check_health=0", "?timeout=2s"} {
		r := e.do("GET", "/claim"+q, "")
		if r.status != http.StatusOK {
			t.Fatalf("GET /claim%s: %d %s", q, r.status, r.body)
		}
		var url string
		r.json(t, &url) // a JSON string, as the seed's web function answers
		if !strings.HasPrefix(url, "fake://sb-") {
			t.Fatalf("GET /claim%s: url %q", q, url)
		}
		if ct := r.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		if q == "?timeout=2s" {
			break
		}
		if err := e.ctrl.Maintain(context.Background()); err != nil { // backfill
			t.Fatal(err)
		}
		waitReady(t, e, 3)
	}
}

func TestClaimJSON(t *testing.T) {
	e := newEnv(t, envOpts{size: 2, fill: true})
	before := time.Now()
	r := e.do("POST", "/v1/claims?check_health=false&timeout=30s", "")
	if r.status != http.StatusOK {
		t.Fatalf("POST /v1/claims: %d %s", r.status, r.body)
	}
	assertKeys(t, "claim", r.body, "id", "url", "expires_at", "seconds_left")
	var raw map[string]any
	r.json(t, &raw)
	exp, err := time.Parse(time.RFC3339, raw["expires_at"].(string))
	if err != nil {
		t.Fatalf("expires_at %v: %v", raw["expires_at"], err)
	}
	ttl := e.ctrl.Config().TTL
	jitter := ttl / 40 // slack: this config spreads no expiries (TTLJitter 0)
	if exp.Before(before.Add(ttl-jitter-2*time.Second)) || exp.After(before.Add(ttl+time.Second)) {
		t.Errorf("expires_at %s: want about now+%s", exp, ttl)
	}
	left := raw["seconds_left"].(float64)
	if left != float64(int64(left)) || left < (ttl-jitter).Seconds()-2 || left > ttl.Seconds() {
		t.Errorf("seconds_left %v: want a whole number near %v", left, ttl.Seconds())
	}
	var v httpapi.ClaimView
	r.json(t, &v)
	snap := e.ctrl.Snapshot()
	i := slices.IndexFunc(snap.Sandboxes, func(s pool.Sandbox) bool { return s.ID == v.ID })
	if i < 0 || snap.Sandboxes[i].State != pool.StateClaimed || snap.Sandboxes[i].URL != v.URL {
		t.Fatalf("claimed %+v; snapshot %+v", v, snap.Sandboxes)
	}
	if by := snap.Sandboxes[i].ClaimedBy; !strings.HasPrefix(by, "api 127.0.0.1:") {
		t.Errorf("claimed by %q: want api <remote address>", by)
	}
}

func TestPoolJSON(t *testing.T) {
	e := newEnv(t, envOpts{size: 3, fill: true})
	if r := e.do("POST", "/v1/claims", ""); r.status != 200 {
		t.Fatalf("claim: %d %s", r.status, r.body)
	}
	r := e.do("GET", "/v1/pool", "")
	if r.status != http.StatusOK {
		t.Fatalf("GET /v1/pool: %d %s", r.status, r.body)
	}
	assertKeys(t, "pool", r.body, "pool", "backend", "target", "counts", "sandboxes", "warm_hit_ratio", "waste_seconds", "claims")
	var raw struct {
		Counts    json.RawMessage   `json:"counts"`
		Sandboxes []json.RawMessage `json:"sandboxes"`
	}
	r.json(t, &raw)
	var states []string
	for _, s := range pool.States {
		states = append(states, string(s))
	}
	assertKeys(t, "counts", raw.Counts, states...)
	if len(raw.Sandboxes) != 3 {
		t.Fatalf("%d sandboxes: %s", len(raw.Sandboxes), r.body)
	}
	for _, sb := range raw.Sandboxes {
		assertKeys(t, "sandbox", sb, "id", "url", "state", "created_at", "expires_at", "seconds_left", "health")
		var h struct {
			Health json.RawMessage `json:"health"`
		}
		_ = json.Unmarshal(sb, &h)
		assertKeys(t, "health", h.Health, "ok", "status", "latency_ms", "checked_at", "error")
	}
	// SPEC's order of keys, and counts in SPEC's order of states.
	if !strings.HasPrefix(string(r.body), `{"pool":"test","backend":"fake","target":3,"counts":{"creating":0,"warming":0,"ready":2,"unhealthy":0,"expiring":0,"claimed":1,"terminating":0,"failed":0},"sandboxes":[{"id":"sb-000`) ||
		!strings.Contains(string(r.body), `","state":"claimed","created_at":"`) {
		t.Errorf("pool JSON:\n%s", r.body)
	}
	var v httpapi.PoolView
	r.json(t, &v)
	if v.WarmHitRatio != 1 || v.Claims != (httpapi.ClaimCounts{Warm: 1}) {
		t.Errorf("warm_hit_ratio %v, claims %+v after one warm claim", v.WarmHitRatio, v.Claims)
	}
	sb := v.Sandboxes[1]
	if sb.State != pool.StateReady || !sb.Health.OK || sb.Health.Status != 200 || sb.Health.CheckedAt == nil ||
		sb.SecondsLeft < 295 || sb.ExpiresAt == nil || sb.CreatedAt == nil {
		t.Errorf("sandbox %+v", sb)
	}
	if got, want := v, httpapi.NewPoolView(e.ctrl.Snapshot()); got.Counts != want.Counts || got.Target != want.Target {
		t.Errorf("API %+v, view of the snapshot %+v", got, want)
	}
}

func TestResize(t *testing.T) {
	e := newEnv(t, envOpts{size: 1, fill: true, cfg: func(c *pool.Config) { c.MaxSize = 5 }})
	r := e.do("PUT", "/v1/pool/size", `{"size":4}`)
	if r.status != http.StatusOK {
		t.Fatalf("PUT size: %d %s", r.status, r.body)
	}
	var v httpapi.PoolView
	r.json(t, &v)
	if v.Target != 4 || e.ctrl.Target() != 4 {
		t.Fatalf("target %d (controller %d), want 4", v.Target, e.ctrl.Target())
	}
	if st, _ := e.st.Load(context.Background()); st.Target != 4 || !st.HasTarget {
		t.Fatalf("stored target %d", st.Target)
	}
	for _, tc := range []struct{ body, want string }{
		{`{"size":-1}`, "size -1: must be between 0 and 5"},
		{`{"size":6}`, "size 6: must be between 0 and 5"},
		{`{"size":"3"}`, "cannot unmarshal"},
		{`{"size":2.5}`, "cannot unmarshal"},
		{`{"size":2,"extra":1}`, "unknown field"},
		{`{"size":2}{"size":3}`, "after the JSON value"},
		{`{"size":2} x`, "after the JSON value"},
		{`{}`, `want {"size":N}`},
		{`{"size":null}`, `want {"size":N}`},
		{``, "empty"},
		{`{"size":`, "unexpected EOF"},
		{`[1]`, "cannot unmarshal"},
		{`{"size":1,` + strings.Repeat(" ", httpapi.MaxBodyBytes) + `}`, "larger than"},
	} {
		r := e.do("PUT", "/v1/pool/size", tc.body)
		if r.status != http.StatusBadRequest {
			t.Errorf("body %.40q: %d %s, want 400", tc.body, r.status, r.body)
			continue
		}
		if msg := r.errorText(t); !strings.Contains(msg, tc.want) {
			t.Errorf("body %.40q: error %q, want it to say %q", tc.body, msg, tc.want)
		}
	}
	if e.ctrl.Target() != 4 {
		t.Fatalf("a bad resize changed the target to %d", e.ctrl.Target())
	}
}

func TestTerminate(t *testing.T) {
	e := newEnv(t, envOpts{size: 2, fill: true})
	var claimed httpapi.ClaimView
	e.do("POST", "/v1/claims", "").json(t, &claimed)
	pooled := "sb-0001"
	if claimed.ID == pooled {
		pooled = "sb-0002"
	}
	for _, id := range []string{claimed.ID, pooled} {
		r := e.do("DELETE", "/v1/sandboxes/"+id, "")
		if r.status != http.StatusOK {
			t.Fatalf("DELETE %s: %d %s", id, r.status, r.body)
		}
		var v httpapi.TerminateView
		r.json(t, &v)
		if v.ID != id || !v.Terminated {
			t.Errorf("DELETE %s: %+v", id, v)
		}
		if slices.Contains(e.be.Live(), id) {
			t.Errorf("%s still runs", id)
		}
	}
	r := e.do("DELETE", "/v1/sandboxes/sb-9999", "")
	if r.status != http.StatusNotFound {
		t.Fatalf("DELETE unknown: %d %s", r.status, r.body)
	}
	if msg := r.errorText(t); !strings.Contains(msg, "sb-9999") {
		t.Errorf("404 error %q does not name the id", msg)
	}
}

func TestMaintain(t *testing.T) {
	e := newEnv(t, envOpts{size: 2})
	r := e.do("POST", "/v1/maintain", "")
	if r.status != http.StatusOK {
		t.Fatalf("POST /v1/maintain: %d %s", r.status, r.body)
	}
	var v httpapi.PoolView
	r.json(t, &v)
	if v.Counts.Creating+v.Counts.Warming+v.Counts.Ready != 2 {
		t.Fatalf("after a pass: %+v", v.Counts)
	}
	waitReady(t, e, 2)
}

func TestHealthzAndUnknown(t *testing.T) {
	e := newEnv(t, envOpts{size: 0})
	if r := e.do("GET", "/healthz", ""); r.status != 200 || !strings.Contains(string(r.body), `"ok"`) {
		t.Fatalf("healthz: %d %s", r.status, r.body)
	}
	for _, tc := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", "/nope", 404, ""},
		{"GET", "/v1/sandboxes/x", 405, "DELETE"},
		{"POST", "/v1/pool", 405, "GET, HEAD"},
		{"DELETE", "/v1/claims", 405, "POST"},
		{"POST", "/claim", 405, "GET, HEAD"},
		{"GET", "/v1/pool/size", 405, "PUT"},
		{"PATCH", "/healthz", 405, "GET, HEAD"},
		{"HEAD", "/claim", 405, "GET"}, // a HEAD must not claim
	} {
		r := e.do(tc.method, tc.path, "")
		if r.status != tc.status {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, r.status, r.body, tc.status)
			continue
		}
		if tc.method != "HEAD" { // no body
			msg := r.errorText(t)
			if !strings.Contains(msg, tc.path) {
				t.Errorf("%s %s: error %q does not name the path", tc.method, tc.path, msg)
			}
		}
		if got := r.header.Get("Allow"); got != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.path, got, tc.allow)
		}
	}
}

func TestServerLimits(t *testing.T) {
	if httpapi.ReadTimeout <= 0 || httpapi.WriteTimeout <= 0 || httpapi.IdleTimeout <= 0 || httpapi.MaxHeaderBytes <= 0 {
		t.Fatal("missing limits")
	}
	if httpapi.MaxBodyBytes > 1<<20 {
		t.Fatalf("body cap %d", httpapi.MaxBodyBytes)
	}
}

func TestClaimBadParameters(t *testing.T) {
	e := newEnv(t, envOpts{size: 1, fill: true})
	for _, q := range []string{
		"timeout=30", "timeout=abc", "timeout=-1s", "timeout=0s", "timeout=10m",
		"check_health=maybe", "check_health=", "timout=3s",
	} {
		for _, path := range []string{"/claim", "/v1/claims"} {
			method := "POST"
			if path == "/claim" {
				method = "GET"
			}
			r := e.do(method, path+"?"+q, "")
			if r.status != http.StatusBadRequest {
				t.Errorf("%s %s?%s: %d %s, want 400", method, path, q, r.status, r.body)
				continue
			}
			name, _, _ := strings.Cut(q, "=")
			if msg := r.errorText(t); !strings.Contains(msg, name) {
				t.Errorf("%s?%s: error %q does not name %s", path, q, msg, name)
			}
		}
	}
	if c := e.ctrl.Snapshot().Counts; c[pool.StateReady] != 1 || c[pool.StateClaimed] != 0 {
		t.Fatalf("a bad claim took a sandbox: %v", c)
	}
}

func TestNoSandbox503(t *testing.T) {
	e := newEnv(t, envOpts{size: 0})
	start := time.Now()
	r := e.do("POST", "/v1/claims?timeout=150ms", "")
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("claim from an empty pool: %d %s", r.status, r.body)
	}
	if took := time.Since(start); took < 150*time.Millisecond || took > 3*time.Second {
		t.Errorf("503 after %s, want about the 150ms timeout", took)
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 {
		t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
	}
	if msg := r.errorText(t); !strings.Contains(msg, "no good sandbox") {
		t.Errorf("503 error %q", msg)
	}
	if r := e.do("GET", "/claim?timeout=50ms", ""); r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Errorf("GET /claim from an empty pool: %d %v", r.status, r.header)
	}
	// The client maps it to the engine's error.
	_, err := e.client().Claim(context.Background(), true, 50*time.Millisecond)
	var apiErr *httpapi.APIError
	if !errors.Is(err, pool.ErrNoSandbox) || !errors.As(err, &apiErr) || apiErr.RetryAfter < time.Second {
		t.Fatalf("client: %v (%+v)", err, apiErr)
	}
}

func TestReadOnly(t *testing.T) {
	e := newEnv(t, envOpts{size: 1, fill: true, api: httpapi.Options{ReadOnly: true}})
	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/claim", ""}, {"POST", "/v1/claims", ""}, {"PUT", "/v1/pool/size", `{"size":3}`},
		{"DELETE", "/v1/sandboxes/sb-0001", ""}, {"POST", "/v1/maintain", ""},
	} {
		r := e.do(tc.method, tc.path, tc.body)
		if r.status != http.StatusForbidden {
			t.Errorf("%s %s: %d %s, want 403", tc.method, tc.path, r.status, r.body)
			continue
		}
		if msg := r.errorText(t); !strings.Contains(msg, "read-only") {
			t.Errorf("%s %s: error %q", tc.method, tc.path, msg)
		}
	}
	if r := e.do("GET", "/v1/pool", ""); r.status != 200 {
		t.Fatalf("GET /v1/pool read-only: %d", r.status)
	}
	if c := e.ctrl.Snapshot(); c.Counts[pool.StateReady] != 1 || c.Target != 1 {
		t.Fatalf("read-only API changed the pool: %+v", c.Counts)
	}
}

func TestToken(t *testing.T) {
	const token = "s3cret-T0KEN-value"
	e := newEnv(t, envOpts{size: 2, fill: true, api: httpapi.Options{Token: token}})
	endpoints := []struct{ method, path, body string }{
		{"GET", "/claim", ""}, {"POST", "/v1/claims", ""}, {"GET", "/v1/pool", ""},
		{"PUT", "/v1/pool/size", `{"size":2}`}, {"DELETE", "/v1/sandboxes/sb-0002", ""},
		{"POST", "/v1/maintain", ""}, {"GET", "/metrics", ""}, {"GET", "/nope", ""},
	}
	wrong := []string{"", "Bearer", "Bearer ", "Bearer wrong", "Bearer " + token + "x", "Basic " + token, token, "Bearer " + token[:5]}
	for _, ep := range endpoints {
		for _, auth := range wrong {
			r := e.do(ep.method, ep.path, ep.body, "Authorization", auth)
			if r.status != http.StatusUnauthorized {
				t.Errorf("%s %s with %q: %d, want 401", ep.method, ep.path, auth, r.status)
				continue
			}
			if msg := r.errorText(t); strings.Contains(msg, token) {
				t.Errorf("401 error %q echoes the token", msg)
			}
		}
	}
	if c := e.ctrl.Snapshot().Counts; c[pool.StateReady] != 2 {
		t.Fatalf("unauthorised requests changed the pool: %v", c)
	}
	// The right token opens every endpoint; /healthz needs none.
	for _, ep := range endpoints[:len(endpoints)-1] {
		if r := e.do(ep.method, ep.path, ep.body); r.status != 200 {
			t.Errorf("%s %s with the token: %d %s", ep.method, ep.path, r.status, r.body)
		}
	}
	if r := e.do("GET", "/healthz", "", "Authorization", ""); r.status != 200 {
		t.Errorf("healthz without a token: %d", r.status)
	}
	if r := e.do("GET", "/v1/pool", "", "Authorization", "bearer "+token); r.status != 200 {
		t.Errorf("lower-case scheme: %d", r.status)
	}
	c := e.client()
	if _, err := c.Pool(context.Background()); err != nil {
		t.Errorf("client with the token: %v", err)
	}
	c.Token = "wrong"
	var apiErr *httpapi.APIError
	if _, err := c.Pool(context.Background()); !errors.As(err, &apiErr) || apiErr.Status != 401 {
		t.Errorf("client with a wrong token: %v", err)
	}

	// A claim route's line comes a few ms after its answer.
	testkit.Eventually(t, 5*time.Second, "the requests logged", func() bool {
		logs := e.logs.String()
		return strings.Contains(logs, "path=/v1/claims") && strings.Contains(logs, "status=401")
	})
	logs := e.logs.String()
	if strings.Contains(logs, token) || strings.Contains(logs, token[:5]) || strings.Contains(logs, "Bearer") {
		t.Fatalf("the token leaked into the logs:\n%s", logs)
	}
}

func TestRequestLog(t *testing.T) {
	e := newEnv(t, envOpts{size: 1, fill: true})
	e.do("POST", "/v1/claims", "")
	e.do("GET", "/metrics", "")
	var claimLine string
	// A claim's line comes a few ms after its answer.
	testkit.Eventually(t, 5*time.Second, "the claim's line", func() bool {
		for _, l := range strings.Split(e.logs.String(), "\n") {
			if strings.Contains(l, "path=/v1/claims") {
				claimLine = l
			}
		}
		return claimLine != ""
	})
	for _, want := range []string{"level=INFO", "method=POST", "status=200", "duration=", "remote=127.0.0.1:"} {
		if !strings.Contains(claimLine, want) {
			t.Errorf("claim log line %q lacks %q", claimLine, want)
		}
	}
	if !strings.Contains(e.logs.String(), "level=DEBUG msg=\"http request\" method=GET path=/metrics") {
		t.Errorf("metrics scrape not logged at debug:\n%s", e.logs.String())
	}
}

func TestCheckListen(t *testing.T) {
	for _, tc := range []struct {
		listen, token string
		ok            bool
	}{
		{"127.0.0.1:7780", "", true},
		{"127.0.0.1:0", "", true},
		{"127.1.2.3:7780", "", true},
		{"[::1]:7780", "", true},
		{"localhost:7780", "", true},
		{"", "", true},
		{"0.0.0.0:7780", "", false},
		{"0.0.0.0:7780", "0123456789abcdef", true},
		{":7780", "", false},
		{"[::]:7780", "", false},
		{"10.0.0.5:7780", "", false},
		{"example.com:7780", "", false},
		{"example.com:7780", "0123456789abcdef", true},
		{"127.0.0.1", "", false},
		{"127.0.0.1:http", "", false},
		{"127.0.0.1:70000", "", false},
		{"127.0.0.1:70000", "0123456789abcdef", false},
	} {
		err := httpapi.CheckListen(tc.listen, tc.token)
		if (err == nil) != tc.ok {
			t.Errorf("CheckListen(%q, %q) = %v, want ok %v", tc.listen, tc.token, err, tc.ok)
			continue
		}
		if err != nil {
			msg := err.Error()
			if strings.Contains(msg, "\n") || !strings.Contains(msg, "--listen") {
				t.Errorf("CheckListen(%q): %q: want one line naming --listen", tc.listen, msg)
			}
			if tc.token == "" && strings.HasSuffix(tc.listen, ":7780") && !strings.Contains(msg, "--token") {
				t.Errorf("CheckListen(%q): %q does not name --token", tc.listen, msg)
			}
		}
	}
}

func TestClient(t *testing.T) {
	e := newEnv(t, envOpts{size: 2, fill: true, cfg: func(c *pool.Config) { c.MaxSize = 3 }})
	ctx := context.Background()
	c := e.client()
	c.BaseURL = strings.TrimPrefix(e.base, "http://") + "/" // bare host:port works
	v, err := c.Claim(ctx, true, time.Second)
	if err != nil || v.ID == "" || v.SecondsLeft < 290 {
		t.Fatalf("Claim: %+v %v", v, err)
	}
	p, err := c.Pool(ctx)
	if err != nil || p.Counts.Claimed != 1 || p.Counts.Ready != 1 || p.Backend != "fake" {
		t.Fatalf("Pool: %+v %v", p, err)
	}
	if p, err = c.Resize(ctx, 3); err != nil || p.Target != 3 {
		t.Fatalf("Resize: %+v %v", p, err)
	}
	var apiErr *httpapi.APIError
	if _, err = c.Resize(ctx, 4); !errors.As(err, &apiErr) || apiErr.Status != 400 || !strings.Contains(apiErr.Message, "size 4") {
		t.Fatalf("Resize too big: %v", err)
	}
	if p, err = c.Maintain(ctx); err != nil || p.Target != 3 {
		t.Fatalf("Maintain: %+v %v", p, err)
	}
	if err = c.Terminate(ctx, v.ID); err != nil {
		t.Fatalf("Terminate: %v", err)
	}
	if err = c.Terminate(ctx, v.ID); !errors.Is(err, pool.ErrNotFound) {
		t.Fatalf("Terminate twice: %v", err)
	}
	// The client's views are exactly what the CLI would print for the same snapshot.
	snap := e.ctrl.Snapshot()
	local, _ := json.Marshal(httpapi.NewPoolView(snap))
	var viaAPI map[string]any
	e.do("GET", "/v1/pool", "").json(t, &viaAPI)
	var direct map[string]any
	_ = json.Unmarshal(local, &direct)
	if !slices.Equal(slices.Sorted(maps.Keys(direct)), slices.Sorted(maps.Keys(viaAPI))) {
		t.Fatalf("keys differ: %v vs %v", direct, viaAPI)
	}
}

func TestShutdownCancelsWaitingClaims(t *testing.T) {
	e := newEnv(t, envOpts{size: 0})
	done := make(chan response, 1)
	go func() {
		req, _ := http.NewRequest("POST", e.base+"/v1/claims?timeout=60s", nil)
		resp, err := e.http.Do(req)
		if err != nil {
			done <- response{status: -1, body: []byte(err.Error())}
			return
		}
		defer resp.Body.Close()
		var body []byte
		body = fmt.Appendf(body, "%s", readAll(resp))
		done <- response{status: resp.StatusCode, header: resp.Header, body: body}
	}()
	waitClaimWaiting(t, e)
	start := time.Now()
	e.stop()
	select {
	case r := <-done:
		if r.status != http.StatusServiceUnavailable || !strings.Contains(string(r.body), "shutting down") || r.header.Get("Retry-After") == "" {
			t.Fatalf("waiting claim at shutdown: %d %s", r.status, r.body)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a waiting claim held the shutdown for 3s")
	}
	if err := <-e.errc; err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("shutdown took %s", took)
	}
}

// ---- helpers ----

func readAll(resp *http.Response) []byte {
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return []byte(b.String())
		}
	}
}

// assertKeys checks that a JSON object has exactly these keys.
func assertKeys(t testing.TB, what string, data []byte, keys ...string) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s: %s: %v", what, data, err)
	}
	got := slices.Sorted(maps.Keys(m))
	want := slices.Sorted(slices.Values(keys))
	if !slices.Equal(got, want) {
		t.Fatalf("%s keys %v, want %v", what, got, want)
	}
}

func waitReady(t testing.TB, e *env, n int) {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, fmt.Sprintf("%d ready", n), func() bool {
		return e.ctrl.Snapshot().Counts[pool.StateReady] >= n
	})
}

// waitClaimWaiting waits until the first claim from an empty pool waits in
// the controller: it took from the store twice (the fast path, then as the
// head of the queue) and found nothing.
func waitClaimWaiting(t testing.TB, e *env) {
	t.Helper()
	testkit.Eventually(t, 5*time.Second, "a claim waits", func() bool { return e.cst.takes.Load() >= 2 })
}

// afterAbandonedClaim waits for the server to see a waiting claim end (its
// client left), then gives the empty pool one sandbox and returns the
// snapshot once it is ready: the abandoned claim must have taken nothing.
func afterAbandonedClaim(t testing.TB, e *env) pool.Snapshot {
	t.Helper()
	testkit.Eventually(t, 5*time.Second, "the server sees the claim end", func() bool {
		return e.ctrl.Snapshot().Stats.ClaimsFailed == 1
	})
	if err := e.ctrl.Resize(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if err := e.ctrl.Maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitReady(t, e, 1)
	return e.ctrl.Snapshot()
}
