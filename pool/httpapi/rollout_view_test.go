package httpapi_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

// The pool's JSON has a rollout object while one is under way, none otherwise.
func TestPoolViewRollout(t *testing.T) {
	b, err := json.Marshal(httpapi.NewPoolView(pool.Snapshot{Pool: "p"}))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), `"rollout"`) {
		t.Fatalf("rollout in the JSON with none under way: %s", b)
	}
	s := pool.Snapshot{Pool: "p", Rollout: pool.RolloutStatus{From: "--cmd a", Old: 3, Replacing: 1}}
	if b, err = json.Marshal(httpapi.NewPoolView(s)); err != nil {
		t.Fatal(err)
	}
	if want := `"rollout":{"from":"--cmd a","old":3,"replacing":1}`; !strings.Contains(string(b), want) {
		t.Fatalf("JSON %s lacks %s", b, want)
	}
}
