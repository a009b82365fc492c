package conformance_test

import (
	"context"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/conformance"
	"github.com/sandboxpool/sandboxpool/pool/filestore"
	"github.com/sandboxpool/sandboxpool/pool/local"
)

func TestMain(m *testing.M) {
	// Local sandboxes are this test binary re-executed.
	local.MaybeRunChild()
	testkit.Main(m)
}

// TestLocal runs the suite on the local process backend and the file store.
func TestLocal(t *testing.T) {
	conformance.Run(t, newLocalEnv)
}

func newLocalEnv(t *testing.T) conformance.Env {
	dir := t.TempDir()
	const name = "conformance"
	// Runs last: no process of this pool may outlive the test.
	t.Cleanup(func() {
		b, err := local.New(local.Options{Pool: name, StateDir: dir})
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			err = b.Shutdown(ctx) // the agent too
			cancel()
		}
		if err != nil {
			t.Errorf("shut the local agent down: %v", err)
		}
		if !testkit.Until(10*time.Second, func() bool { return len(procsOf(dir)) == 0 }) {
			t.Errorf("processes of %s left running: %v", dir, procsOf(dir))
		}
	})
	open := func(t *testing.T) (*local.Backend, pool.Store) {
		b, err := local.New(local.Options{Pool: name, StateDir: dir, TermGrace: 500 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		st, err := filestore.Open(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return b, st
	}
	b, st := open(t)
	return conformance.Env{
		Pool:    name,
		Backend: b,
		Store:   st,
		Checker: checker(t, &http.Transport{}),
		Kill: func(t *testing.T, id string) {
			t.Helper()
			// A built-in sandbox lives in the agent: it dies as a crash would.
			if err := b.Kill(context.Background(), id); err != nil {
				t.Fatalf("kill %s: %v", id, err)
			}
			testkit.Eventually(t, 5*time.Second, id+" gone after kill -9", func() bool {
				refs, err := b.List(context.Background())
				return err == nil && !slices.ContainsFunc(refs, func(r pool.Ref) bool { return r.ID == id })
			})
		},
		Reopen: func(t *testing.T) (pool.Backend, pool.Store) { return open(t) },
	}
}

// checker is the health check over tr; its idle connections are closed when
// the test ends, so goleak finds no transport goroutine.
func checker(t *testing.T, tr *http.Transport) pool.Checker {
	t.Cleanup(tr.CloseIdleConnections)
	return pool.NewHTTPChecker(pool.NewHealthClient(tr))
}

// procsOf returns the live processes whose environment mentions dir (the
// pool's agent: its spec names it; --cmd workloads: their mark does).
func procsOf(dir string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !strings.Contains(string(env), dir) {
			continue
		}
		if stat, err := os.ReadFile("/proc/" + e.Name() + "/stat"); err == nil && strings.Contains(string(stat), ") Z ") {
			continue // a zombie waiting for its parent
		}
		pid, _ := strconv.Atoi(e.Name())
		pids = append(pids, pid)
	}
	return pids
}
