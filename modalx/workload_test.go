package modalx

import (
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
)

// TestBackendUsesTheStoredWorkload: a process started with its own --image,
// --cmd and --port creates, once it uses the pool's stored workload, that
// workload's sandboxes: its command, its port's tunnel, its image (built
// then); Workload says it back as stored, and one this build cannot read
// changes nothing.
func TestBackendUsesTheStoredWorkload(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	b, _ := open(t, Options{Pool: "p1"})
	if _, err := b.Create(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	builds := f.Counts()["ImageGetOrCreate"]
	const stored = `{"image":"python:3.12-slim","cmd":"python -m http.server {port} --bind 0.0.0.0","port":9000}`
	if err := b.UseWorkload(stored); err != nil {
		t.Fatal(err)
	}
	if got := b.Workload(); got != stored {
		t.Fatalf("Workload() = %s, want %s", got, stored)
	}
	if err := b.UseWorkload(`{"image":"x","cmd":"y","port":1,"gpu":"h100"}`); err == nil || b.Workload() != stored {
		t.Fatalf("a workload with an unknown field: err %v, workload now %s", err, b.Workload())
	}
	ref, err := b.Create(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if code, _, err := get(f, ref.URL); err != nil || code != 200 {
		t.Fatalf("GET %s: %d %v", ref.URL, code, err)
	}
	for _, sb := range f.Sandboxes() {
		if sb.ID == ref.ID {
			if got := strings.Join(sb.Command, " "); got != "python -m http.server 9000 --bind 0.0.0.0" {
				t.Errorf("command %q, want the stored workload's", got)
			}
		}
	}
	if n := f.Counts()["ImageGetOrCreate"]; n <= builds {
		t.Errorf("no image built for the stored workload's image (%d image calls, %d before)", n, builds)
	}
	if d := b.DescribeWorkload(stored); d != `--image python:3.12-slim --cmd "python -m http.server {port} --bind 0.0.0.0" --port 9000` {
		t.Errorf("DescribeWorkload = %s", d)
	}
}
