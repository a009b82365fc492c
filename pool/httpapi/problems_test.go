package httpapi_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

// While the store cannot be used, /healthz is 503 with the reason, GET
// /v1/pool carries "error" and the metrics count the errors (issue 10 case 6).
func TestProblemsAreShown(t *testing.T) {
	e := newEnv(t, envOpts{size: 2, fill: true, loops: true})
	if r := e.do("GET", "/healthz", ""); r.status != http.StatusOK || strings.Contains(string(r.body), "error") {
		t.Fatalf("healthy pool: healthz %d %s", r.status, r.body)
	}
	var top map[string]any
	if r := e.do("GET", "/v1/pool", ""); json.Unmarshal(r.body, &top) != nil || top["error"] != nil {
		t.Fatalf("healthy pool: /v1/pool has an error: %s", r.body)
	}
	e.st.SetErr(errors.New("store on fire"))
	defer e.st.SetErr(nil)
	testkit.Eventually(t, 5*time.Second, "healthz 503", func() bool { return e.do("GET", "/healthz", "").status == http.StatusServiceUnavailable })
	r := e.do("GET", "/healthz", "")
	var hv map[string]string
	r.json(t, &hv)
	if hv["status"] != "error" || !strings.Contains(hv["error"], "store on fire") {
		t.Errorf("healthz body %s: want status error and the reason", r.body)
	}
	var pv struct {
		Error string `json:"error"`
		Pool  string `json:"pool"`
	}
	if r := e.do("GET", "/v1/pool", ""); r.status != http.StatusOK || json.Unmarshal(r.body, &pv) != nil || !strings.Contains(pv.Error, "store on fire") {
		t.Errorf("/v1/pool while the store fails: %d %s: want 200 with the error", r.status, r.body)
	}
	if v := metric(t, e, `sandboxpool_errors_total{kind="store"}`); v == "" || v == "0" {
		t.Errorf(`sandboxpool_errors_total{kind="store"} = %q, want > 0`, v)
	}
	if v := metric(t, e, `sandboxpool_errors_total{kind="budget"}`); v != "0" {
		t.Errorf(`sandboxpool_errors_total{kind="budget"} = %q, want the series at 0`, v)
	}
	problems := 0
	for _, line := range strings.Split(string(e.do("GET", "/metrics", "").body), "\n") {
		if strings.HasPrefix(line, "sandboxpool_problems{") && !strings.HasSuffix(line, " 0") {
			problems++
		}
	}
	if problems == 0 {
		t.Error("sandboxpool_problems shows nothing while the store fails")
	}
}
