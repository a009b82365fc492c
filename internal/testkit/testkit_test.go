package testkit_test

import (
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/modalx/fakemodal"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// fatalTB records the first Fatalf and ends the goroutine as testing does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// failure runs fn on a recording TB and returns its Fatalf message ("" when none).
func failure(fn func(tb testing.TB)) string {
	tb := &fatalTB{}
	done := make(chan struct{})
	go func() { defer close(done); fn(tb) }()
	<-done
	return tb.msg
}

func TestEventuallyFailsSayingWhat(t *testing.T) {
	start := time.Now()
	msg := failure(func(tb testing.TB) {
		testkit.Eventually(tb, 30*time.Millisecond, "the pool to fill", func() bool { return false })
	})
	if want := "timed out after 30ms waiting for the pool to fill"; msg != want {
		t.Fatalf("message %q, want %q", msg, want)
	}
	if d := time.Since(start); d < 30*time.Millisecond || d > 2*time.Second {
		t.Fatalf("gave up after %s, want about 30ms", d)
	}
}

func TestEventuallyReturnsOnceTrue(t *testing.T) {
	n := 0
	msg := failure(func(tb testing.TB) {
		testkit.Eventually(tb, 10*time.Second, "three polls", func() bool { n++; return n == 3 })
	})
	if msg != "" || n != 3 {
		t.Fatalf("failure %q after %d polls, want none after 3", msg, n)
	}
}

func TestUntil(t *testing.T) {
	if testkit.Until(20*time.Millisecond, func() bool { return false }) {
		t.Fatal("Until held for a condition that never does")
	}
	if !testkit.Until(0, func() bool { return true }) {
		t.Fatal("Until did not hold for a condition already true")
	}
}

func TestSyncBuffer(t *testing.T) {
	var b testkit.SyncBuffer
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				_, _ = b.Write([]byte("x"))
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if n := len(b.String()); n != 400 {
		t.Fatalf("%d bytes, want 400", n)
	}
}

func TestFreeAddr(t *testing.T) {
	addr := testkit.FreeAddr(t)
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("address %q is not loopback", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on the free address: %v", err)
	}
	ln.Close()
}

func TestUseFakeModal(t *testing.T) {
	var f *fakemodal.Server
	t.Run("use", func(t *testing.T) {
		f = testkit.UseFakeModal(t, fakemodal.Options{})
		for k, want := range map[string]string{"MODAL_SERVER_URL": f.URL, "MODAL_TOKEN_ID": f.TokenID, "MODAL_TOKEN_SECRET": f.TokenSecret} {
			if got := os.Getenv(k); got != want {
				t.Errorf("%s=%q, want %q", k, got, want)
			}
		}
	})
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(f.URL, "http://"), time.Second)
	if err == nil {
		conn.Close()
		t.Fatal("the fake still listens after its test ended")
	}
	if got := os.Getenv("MODAL_SERVER_URL"); got == f.URL {
		t.Fatal("MODAL_SERVER_URL still points at the closed fake")
	}
}

// TestNotImported keeps testkit out of the product: only _test.go files
// may import it.
func TestNotImported(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	const self = "github.com/sandboxpool/sandboxpool/internal/testkit"
	var bad []string
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") ||
			filepath.Dir(path) == filepath.Join(root, "internal", "testkit") {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); p == self {
				bad = append(bad, path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Fatalf("non-test files import testkit: %v", bad)
	}
}

func TestAlive(t *testing.T) {
	if !testkit.Alive(os.Getpid()) {
		t.Fatal("this process is not alive")
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	// Exited but not waited for: a zombie, which is not alive.
	testkit.Eventually(t, 10*time.Second, "the exited child to stop being alive", func() bool { return !testkit.Alive(pid) })
	_ = cmd.Wait()
	if testkit.Alive(pid) {
		t.Fatal("a reaped child is alive")
	}
}

func TestGet(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		_, _ = w.Write([]byte("short and stout"))
	}))
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()
	if code, body := testkit.Get(t, srv.Client(), srv.URL); code != http.StatusTeapot || body != "short and stout" {
		t.Fatalf("GET = %d %q", code, body)
	}
	msg := failure(func(tb testing.TB) { testkit.Get(tb, srv.Client(), "http://"+testkit.FreeAddr(t)+"/") })
	if !strings.Contains(msg, "GET http://127.0.0.1:") {
		t.Fatalf("failure %q, want one naming the URL", msg)
	}
}

type countRun struct{ runs *int }

func (c countRun) Run() int { *c.runs++; return 3 }

func TestTeardownRunsAfterTheTests(t *testing.T) {
	runs, torn := 0, 0
	m := testkit.Teardown(countRun{&runs}, func() {
		if runs != 1 {
			t.Errorf("teardown before the tests (%d runs)", runs)
		}
		torn++
	})
	if code := m.Run(); code != 3 || torn != 1 {
		t.Fatalf("Run = %d with %d teardowns, want the tests' code 3 and one teardown", code, torn)
	}
}
