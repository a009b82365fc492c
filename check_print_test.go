package main

import (
	"strings"
	"testing"

	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

// check says when the controller is replacing the pool's old-workload
// sandboxes, and says nothing of it otherwise.
func TestCheckSaysARolloutIsUnderWay(t *testing.T) {
	v := httpapi.PoolView{Pool: "default", Backend: "local", Target: 3}
	var out strings.Builder
	printPool(&out, v, "")
	if strings.Contains(out.String(), "rolling replacement") {
		t.Fatalf("a rollout said with none under way:\n%s", out.String())
	}
	v.Rollout = &httpapi.RolloutView{From: "--cmd python3 -m http.server $PORT", Old: 2, Replacing: 1}
	out.Reset()
	printPool(&out, v, "")
	want := "rolling replacement: 2 pooled sandboxes still run the old workload (--cmd python3 -m http.server $PORT), 1 of them being replaced\n"
	if !strings.Contains(out.String(), want) {
		t.Fatalf("check printed\n%s\nwant a line\n%s", out.String(), want)
	}
}
