package httpapi_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

func TestAutosizeAndCostInTheAPI(t *testing.T) {
	e := newEnv(t, envOpts{cfg: func(c *pool.Config) {
		c.Autosize, c.MinSize, c.MaxSize, c.PricePerHour = true, 1, 40, 0.5
	}})
	var v httpapi.PoolView
	if r := e.do("GET", "/v1/pool", ""); r.status != 200 || json.Unmarshal(r.body, &v) != nil {
		t.Fatalf("GET /v1/pool: %d %s", r.status, r.body)
	}
	if v.Autosize == nil || !v.Autosize.On || v.Autosize.MinSize != 1 || v.Autosize.MaxSize != 40 {
		t.Fatalf("autosize %+v", v.Autosize)
	}
	if v.Cost == nil || v.Cost.PricePerHour != 0.5 {
		t.Fatalf("cost %+v", v.Cost)
	}
	m := e.do("GET", "/metrics", "")
	for _, want := range []string{"sandboxpool_autosize_enabled 1", "sandboxpool_idle_cost_total ", "sandboxpool_cost_per_hour ", "sandboxpool_claim_rate "} {
		if !strings.Contains(string(m.body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// A resize through the API turns autosize off, and the answer says so.
	r := e.do("PUT", "/v1/pool/size", `{"size":3}`)
	v = httpapi.PoolView{}
	if r.status != 200 || json.Unmarshal(r.body, &v) != nil {
		t.Fatalf("PUT /v1/pool/size: %d %s", r.status, r.body)
	}
	if v.Autosize == nil || v.Autosize.On || v.Autosize.Off != "target set to 3 by hand" || v.Target != 3 {
		t.Fatalf("after a resize: target %d, autosize %+v", v.Target, v.Autosize)
	}
}
