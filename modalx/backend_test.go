package modalx

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
	"github.com/sandboxpool/sandboxpool/pool"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func open(t *testing.T, opts Options) (*Backend, *Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, s, err := New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(); s.Close() })
	return b, s
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func get(f *fakemodal.Server, url string) (int, string, error) {
	resp, err := f.HTTPClient().Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func ids(refs []pool.Ref) []string {
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i] = r.ID
	}
	slices.Sort(out)
	return out
}

func TestBackendCreateListTerminate(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	b, _ := open(t, Options{Pool: "p1"})
	other, _ := open(t, Options{Pool: "p2"})
	otherApp, _ := open(t, Options{Pool: "p1", App: "another-app"})

	var made []pool.Ref
	for range 3 {
		ref, err := b.Create(ctx, 5*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(ref.URL, "https://127.0.0.1:") {
			t.Fatalf("url %q", ref.URL)
		}
		if d := ref.ExpiresAt.Sub(ref.CreatedAt); d != 5*time.Minute {
			t.Fatalf("expiry %v after creation", d)
		}
		code, body, err := get(f, ref.URL)
		if err != nil || code != 200 || !strings.Contains(body, "Directory listing") {
			t.Fatalf("GET %s: %d %v", ref.URL, code, err)
		}
		made = append(made, ref)
	}
	if _, err := other.Create(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := otherApp.Create(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}

	// Sandbox definition: command, port, timeout, tags, and no idle timeout.
	for _, sb := range f.Sandboxes() {
		if sb.ID == made[0].ID {
			if got := strings.Join(sb.Command, " "); got != "python -m http.server 8080" {
				t.Fatalf("command %q", got)
			}
			if sb.Tags[TagPool] != "p1" || sb.Tags[TagURL] != made[0].URL || sb.Timeout != 5*time.Minute {
				t.Fatalf("sandbox %+v", sb)
			}
		}
	}

	got, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(got), ids(made)) {
		t.Fatalf("List = %v, want %v", ids(got), ids(made))
	}
	for i, r := range got { // oldest first, with what the tags say
		if r != made[i] && !(r.ID == made[i].ID && r.URL == made[i].URL && r.ExpiresAt.Equal(made[i].ExpiresAt)) {
			t.Fatalf("List[%d] = %+v, want %+v", i, r, made[i])
		}
	}

	// A fresh client (no cache) reads the same from the tags, in one page.
	fresh, _ := open(t, Options{Pool: "p1"})
	f.ResetCounts()
	got2, err := fresh.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(got2), ids(made)) || got2[0].URL != made[0].URL || !got2[0].ExpiresAt.Equal(made[0].ExpiresAt) {
		t.Fatalf("fresh List = %+v", got2)
	}
	t.Logf("List of 3 from a fresh client: %s", fakemodal.FormatCounts(f.Counts()))

	// A sandbox whose server died is still running for Modal (the engine's
	// health check finds it dead).
	f.KillServer(made[2].ID)
	if _, _, err := get(f, made[2].URL); err == nil {
		t.Fatal("killed server still answers")
	}
	if got, _ := b.List(ctx); len(got) != 3 {
		t.Fatalf("List after KillServer: %v", ids(got))
	}

	if err := b.Terminate(ctx, made[1].ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := get(f, made[1].URL); err == nil {
		t.Fatal("terminated sandbox still answers")
	}
	if err := b.Terminate(ctx, made[1].ID); err != nil {
		t.Fatalf("terminating twice: %v", err)
	}
	if err := b.Terminate(ctx, "sb-unknown"); err != nil {
		t.Fatalf("terminating an unknown id: %v", err)
	}
	got, err = b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := ids([]pool.Ref{made[0], made[2]}); !slices.Equal(ids(got), want) {
		t.Fatalf("List after terminate = %v, want %v", ids(got), want)
	}
}

func TestBackendSandboxExpires(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	ctx := ctxT(t)
	b, _ := open(t, Options{Pool: "short"})
	ref, err := b.Create(ctx, 1500*time.Millisecond) // rounded up to 2s, as Modal counts whole seconds
	if err != nil {
		t.Fatal(err)
	}
	if d := ref.ExpiresAt.Sub(ref.CreatedAt); d != 2*time.Second {
		t.Fatalf("ttl %v", d)
	}
	if code, _, err := get(f, ref.URL); err != nil || code != http.StatusOK {
		t.Fatalf("GET: %d %v", code, err)
	}
	testkit.Eventually(t, time.Until(ref.ExpiresAt)+5*time.Second, "the expired sandbox to stop answering", func() bool {
		_, _, err := get(f, ref.URL)
		return err != nil
	})
	if early := time.Until(ref.ExpiresAt); early > time.Second {
		t.Fatalf("the sandbox stopped answering %s before it expired", early)
	}
	got, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Fatalf("expired sandbox still listed: %v", got)
	}
}

func TestSplitCmd(t *testing.T) {
	if got := splitCmd("python -m http.server {port}", 9000); !slices.Equal(got, []string{"python", "-m", "http.server", "9000"}) {
		t.Fatal(got)
	}
	if got := splitCmd("cd /app && python -m http.server $PORT", 1); got[0] != "sh" || got[2] != "cd /app && python -m http.server $PORT" {
		t.Fatal(got)
	}
}

func TestFakeWarmup(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	b, _ := open(t, Options{Pool: "warm"})
	f.SetWarmup(300 * time.Millisecond)
	ref, err := b.Create(ctxT(t), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if code, _, _ := get(f, ref.URL); code != http.StatusServiceUnavailable {
		t.Fatalf("warming sandbox answered %d", code)
	}
	testkit.Eventually(t, 5*time.Second, "the sandbox to warm up", func() bool {
		code, _, _ := get(f, ref.URL)
		return code == http.StatusOK
	})
}

// TestFakeLatencyAndCreateDelay: the fake's knobs make figures reproducible:
// each RPC takes the latency, each creation the create delay, and the
// counters say which RPCs ran.
func TestFakeLatencyAndCreateDelay(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	b, s := open(t, Options{Pool: "knobs"})
	ctx := ctxT(t)
	if _, err := b.Create(ctx, time.Minute); err != nil { // builds the image first
		t.Fatal(err)
	}
	f.SetLatency(20 * time.Millisecond)
	f.SetCreateDelay(300 * time.Millisecond)
	f.ResetCounts()
	start := time.Now()
	if _, err := s.q.Len(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 20*time.Millisecond || d > 500*time.Millisecond {
		t.Errorf("one RPC took %s with 20ms latency", d)
	}
	start = time.Now()
	if _, err := b.Create(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 2*time.Second {
		t.Errorf("a creation took %s with a 300ms create delay", d)
	}
	if c := f.Counts(); c["QueueLen"] != 1 || c["SandboxCreate"] != 1 {
		t.Errorf("counts %s: want one QueueLen and one SandboxCreate", fakemodal.FormatCounts(c))
	}
}

// TestFakeStopRestart: a stopped control plane is unreachable while its
// sandboxes keep serving; restarted empty, it has lost its queues.
func TestFakeStopRestart(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	b, s := open(t, Options{Pool: "outage"})
	ctx := ctxT(t)
	ref, err := b.Create(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	f.Stop()
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = s.q.Len(short, nil)
	cancel()
	if err == nil {
		t.Fatal("an RPC succeeded while the control plane was stopped")
	}
	if code, _, err := get(f, ref.URL); err != nil || code != http.StatusOK {
		t.Fatalf("the sandbox stopped serving with its control plane: %d %v", code, err)
	}
	if err := f.Restart(true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.q.Len(ctx, nil); !isNotFound(err) {
		t.Fatalf("the queue survived an empty restart: %v", err)
	}
	refs, err := b.List(ctx)
	if err != nil || len(refs) != 1 || refs[0].ID != ref.ID {
		t.Fatalf("after the restart List says %v, %v; want the one sandbox", refs, err)
	}
}

// TestReadLog: a sandbox's output (the server's start line, one line per
// request) through pool.LogReader, read incrementally.
func TestReadLog(t *testing.T) {
	f := testkit.UseFakeModal(t, fakemodal.Options{})
	b, _ := open(t, Options{Pool: "logs"})
	ctx := ctxT(t)
	ref, err := b.Create(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := get(f, ref.URL+"/first"); err != nil {
		t.Fatal(err)
	}
	data, next, err := b.ReadLog(ctx, ref.ID, 0, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "Serving HTTP on") || !strings.Contains(string(data), `"GET /first HTTP/1.1" 200`) {
		t.Fatalf("log %q", data)
	}
	if _, _, err := get(f, ref.URL+"/second"); err != nil {
		t.Fatal(err)
	}
	more, next2, err := b.ReadLog(ctx, ref.ID, next, 1<<16)
	if err != nil || !strings.Contains(string(more), "/second") || strings.Contains(string(more), "/first") || next2 <= next {
		t.Fatalf("after %d: %q, next %d, %v", next, more, next2, err)
	}
	tail, _, _ := b.ReadLog(ctx, ref.ID, -1, 10)
	if len(tail) != 10 {
		t.Fatalf("last 10 bytes: %q", tail)
	}
	if _, _, err := b.ReadLog(ctx, "sb-unknown", 0, 10); !errors.Is(err, pool.ErrNotFound) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("ReadLog of an unknown sandbox = %v, want one line wrapping pool.ErrNotFound", err)
	}
}
