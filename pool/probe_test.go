package pool

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

// connCounter counts the connections a test server accepted and has open.
type connCounter struct {
	mu           sync.Mutex
	opened, open int
}

func (c *connCounter) state(_ net.Conn, s http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch s {
	case http.StateNew:
		c.opened++
		c.open++
	case http.StateClosed, http.StateHijacked:
		c.open--
	}
}

func (c *connCounter) get() (opened, open int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.opened, c.open
}

func probeServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *connCounter) {
	t.Helper()
	cc := &connCounter{}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = cc.state
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, cc
}

func TestLoopProberAnswersAsTheHTTPClient(t *testing.T) {
	srv, cc := probeServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/":
			_, _ = w.Write([]byte("listing"))
		case "/moved":
			http.Redirect(w, r, "/", http.StatusFound)
		case "/big":
			_, _ = w.Write([]byte(strings.Repeat("x", probeBodyMax+10)))
		case "/long":
			// Past the probe's read buffer: read in pieces, and kept.
			w.Header().Set("X-Long", strings.Repeat("h", 3000))
			_, _ = w.Write([]byte(strings.Repeat("x", 5000)))
		case "/close":
			w.Header().Set("Connection", "close")
		default:
			http.Error(w, "no", http.StatusInternalServerError)
		}
	})
	clk := clockwork.NewFakeClock()
	loop := newLoopProber(clk)
	defer loop.closeIdle()
	check := newHTTPCheckerWith(nil, clk, loop)
	ctx := context.Background()
	for _, tc := range []struct {
		path      string
		ok        bool
		status    int
		err       string
		newConns  int // connections the server saw opened by this probe
		keptAfter int // open after it
	}{
		{"/", true, 200, "", 1, 1},
		{"/", true, 200, "", 0, 1}, // the kept connection
		{"/moved", true, 302, "", 0, 1},
		{"/bad", false, 500, "500", 0, 1},
		{"/long", true, 200, "", 0, 1},
		{"/big", true, 200, "", 0, 0}, // not drained: not kept
		{"/close", true, 200, "", 1, 0},
		{"/", true, 200, "", 1, 1},
	} {
		before, _ := cc.get()
		h := check(ctx, srv.URL+tc.path)
		if h.OK != tc.ok || h.Status != tc.status || h.Error != tc.err {
			t.Fatalf("%s: got ok=%v status=%d err=%q, want ok=%v status=%d err=%q", tc.path, h.OK, h.Status, h.Error, tc.ok, tc.status, tc.err)
		}
		testkit.Eventually(t, 5*time.Second, tc.path+": connections as expected", func() bool {
			opened, open := cc.get()
			return opened-before == tc.newConns && open == tc.keptAfter
		})
	}
}

func TestLoopProberRetriesAConnectionTheSandboxClosed(t *testing.T) {
	srv, cc := probeServer(t, func(w http.ResponseWriter, r *http.Request) {})
	clk := clockwork.NewFakeClock()
	loop := newLoopProber(clk)
	defer loop.closeIdle()
	check := newHTTPCheckerWith(nil, clk, loop)
	if h := check(context.Background(), srv.URL); !h.OK {
		t.Fatalf("first probe: %+v", h)
	}
	// The server ends its idle connections (a sandbox's idle timeout).
	srv.Config.SetKeepAlivesEnabled(false)
	testkit.Eventually(t, 5*time.Second, "the idle connection closed by the server", func() bool {
		_, open := cc.get()
		return open == 0
	})
	srv.Config.SetKeepAlivesEnabled(true)
	if h := check(context.Background(), srv.URL); !h.OK {
		t.Fatalf("probe after the server closed the kept connection: %+v", h)
	}
	if opened, _ := cc.get(); opened != 2 {
		t.Fatalf("%d connections opened, want 2", opened)
	}
}

func TestLoopProberFailures(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedURL := "http://" + ln.Addr().String()
	ln.Close()

	block := make(chan struct{})
	srv, _ := probeServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	})
	defer close(block)

	clk := clockwork.NewFakeClock()
	loop := newLoopProber(clk)
	defer loop.closeIdle()
	check := newHTTPCheckerWith(nil, clk, loop)
	if h := check(context.Background(), refusedURL); h.OK || h.Error != "refused" {
		t.Fatalf("closed port: %+v, want refused", h)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if h := check(ctx, srv.URL); h.OK || h.Error != "timeout" {
		t.Fatalf("hung sandbox: %+v, want timeout", h)
	}
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	if h := check(ctx, srv.URL); h.OK || !strings.Contains(h.Error, "canceled") {
		t.Fatalf("cancelled probe: %+v, want canceled", h)
	}
}

func TestLoopProberTakesOnlyLoopbackHTTP(t *testing.T) {
	loop := newLoopProber(clockwork.NewFakeClock())
	for url, want := range map[string]bool{
		"http://127.0.0.1:8080":       true,
		"http://127.0.0.1:8080/x?y=1": true,
		"http://[::1]:8080/":          true,
		"http://127.0.0.1":            false, // no port: the client's defaults
		"https://127.0.0.1:8443":      false,
		"http://example.com:80":       false,
		"http://10.0.0.1:80":          false,
		"http://u:p@127.0.0.1:80":     false,
		"http://localhost:80":         false,
	} {
		if _, _, ok := loop.target(url); ok != want {
			t.Errorf("target(%s) = %v, want %v", url, ok, want)
		}
	}
	var none *loopProber
	if _, _, ok := none.target("http://127.0.0.1:80"); ok {
		t.Error("a nil prober takes nothing")
	}
}

func TestLoopProberClosesIdleConnections(t *testing.T) {
	srv, cc := probeServer(t, func(w http.ResponseWriter, r *http.Request) {})
	clk := clockwork.NewFakeClock()
	loop := newLoopProber(clk)
	check := newHTTPCheckerWith(nil, clk, loop)
	if h := check(context.Background(), srv.URL); !h.OK {
		t.Fatalf("probe: %+v", h)
	}
	clk.Advance(probeIdleFor / 2)
	if _, open := cc.get(); open != 1 {
		t.Fatalf("%d open before the idle time, want 1", open)
	}
	clk.Advance(probeIdleFor)
	testkit.Eventually(t, 5*time.Second, "the idle connection closed", func() bool {
		_, open := cc.get()
		return open == 0
	})
	if h := check(context.Background(), srv.URL); !h.OK {
		t.Fatalf("probe: %+v", h)
	}
	loop.closeIdle()
	testkit.Eventually(t, 5*time.Second, "closeIdle closed it", func() bool {
		_, open := cc.get()
		return open == 0
	})
}

func TestLoopProberBoundsIdleConnections(t *testing.T) {
	release := make(chan struct{})
	srv, cc := probeServer(t, func(w http.ResponseWriter, r *http.Request) { <-release })
	clk := clockwork.NewFakeClock()
	loop := newLoopProber(clk)
	defer loop.closeIdle()
	check := newHTTPCheckerWith(nil, clk, loop)
	// Three probes at once need three connections; two stay.
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { check(context.Background(), srv.URL) })
	}
	testkit.Eventually(t, 5*time.Second, "three connections", func() bool {
		_, open := cc.get()
		return open == 3
	})
	close(release)
	wg.Wait()
	testkit.Eventually(t, 5*time.Second, "two kept per sandbox", func() bool {
		_, open := cc.get()
		return open == probeIdlePerHost
	})
}
