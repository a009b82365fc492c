package httpapi_test

import (
	"net/http"
	"strings"
	"testing"
)

// Unknown JSON fields in any body are a 400, and POST /v1/claims takes
// nothing or its own shape (issue 10 case 7).
func TestStrictBodies(t *testing.T) {
	e := newEnv(t, envOpts{size: 3, fill: true, loops: true})
	for _, tc := range []struct{ method, path, body, want string }{
		{"POST", "/v1/claims", `{"nope":1}`, "unknown field"},
		{"POST", "/v1/claims", `[]`, "body"},
		{"POST", "/v1/claims", `"x"`, "body"},
		{"POST", "/v1/claims", `{"check_health":"maybe"}`, "check_health"},
		{"POST", "/v1/claims", `{"timeout":30}`, "timeout"},
		{"POST", "/v1/claims", `{"timeout":"forever"}`, "timeout"},
		{"POST", "/v1/claims", `{} {}`, "after the JSON value"},
		{"POST", "/v1/claims", `not json`, "body"},
		{"POST", "/v1/claims?timeout=5s", `{"timeout":"5s"}`, "both"},
		{"PUT", "/v1/pool/size", `{"size":3,"extra":true}`, "unknown field"},
		{"POST", "/v1/maintain", `{"now":true}`, "unknown field"},
		{"POST", "/v1/maintain", `x`, "takes no body"},
		{"DELETE", "/v1/sandboxes/sb-1", `{"force":true}`, "unknown field"},
		{"GET", "/claim", `{"x":1}`, "unknown field"},
		{"GET", "/v1/pool", `{"x":1}`, "unknown field"},
	} {
		r := e.do(tc.method, tc.path, tc.body)
		if r.status != http.StatusBadRequest {
			t.Errorf("%s %s %s: %d %s, want 400", tc.method, tc.path, tc.body, r.status, r.body)
			continue
		}
		if msg := r.errorText(t); !strings.Contains(msg, tc.want) {
			t.Errorf("%s %s %s: %q, want it to say %q", tc.method, tc.path, tc.body, msg, tc.want)
		}
	}
	// Nothing was claimed by the bad requests.
	if n := e.ctrl.Snapshot().Counts["claimed"]; n != 0 {
		t.Fatalf("%d claimed by rejected requests", n)
	}
	// The shapes that are fine.
	for _, tc := range []struct{ method, path, body string }{
		{"POST", "/v1/claims", ""},
		{"POST", "/v1/claims", "  \n"},
		{"POST", "/v1/claims", "{}"},
		{"POST", "/v1/claims", `{"check_health":false,"timeout":"5s"}`},
		{"POST", "/v1/maintain", "{}"},
	} {
		if r := e.do(tc.method, tc.path, tc.body); r.status != http.StatusOK {
			t.Errorf("%s %s %q: %d %s, want 200", tc.method, tc.path, tc.body, r.status, r.body)
		}
	}
}
