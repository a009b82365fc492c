package httpapi_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

// metric returns the value of one sample line of /metrics ("" if absent).
func metric(t *testing.T, e *env, series string) string {
	t.Helper()
	r := e.do("GET", "/metrics", "")
	for _, line := range strings.Split(string(r.body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// dialIdle opens n connections that never send anything.
func dialIdle(t *testing.T, e *env, n int) []net.Conn {
	t.Helper()
	addr := strings.TrimPrefix(e.base, "http://")
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return conns
}

// closedByServer reports whether the server closed c (EOF on read).
func closedByServer(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	return err == io.EOF
}

func TestIdleConnectionsMakeRoom(t *testing.T) {
	e := newEnv(t, envOpts{size: 1, fill: true, api: httpapi.Options{Limits: httpapi.Limits{MaxConns: 8, MaxConnsPerClient: 8}}})
	idle := dialIdle(t, e, 40) // five times the cap, all idle
	// A normal request still gets through, at once.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if r := e.doCtx(ctx, "GET", "/healthz", ""); r.status != http.StatusOK {
		t.Fatalf("healthz with 40 idle connections: %d %s", r.status, r.body)
	}
	if r := e.doCtx(ctx, "POST", "/v1/claims?timeout=1s", ""); r.status != http.StatusOK {
		t.Fatalf("claim with 40 idle connections: %d %s", r.status, r.body)
	}
	// The oldest idle ones were closed by the server, the newest kept.
	testkit.Eventually(t, 2*time.Second, "the first idle connection closed", func() bool { return closedByServer(idle[0]) })
	if closedByServer(idle[len(idle)-1]) {
		t.Error("the newest idle connection was closed before older ones")
	}
	if v := metric(t, e, "sandboxpool_api_idle_closed_total"); v == "" || v == "0" {
		t.Errorf("sandboxpool_api_idle_closed_total = %q, want > 0", v)
	}
	if v := metric(t, e, "sandboxpool_api_connections_max"); v != "8" {
		t.Errorf("sandboxpool_api_connections_max = %q, want 8", v)
	}
}

func TestBusyConnectionsAreNotEvicted(t *testing.T) {
	// Nothing fills the pool: claims wait, so their connections stay busy.
	e := newEnv(t, envOpts{size: 1, api: httpapi.Options{Limits: httpapi.Limits{MaxConns: 3, MaxConnsPerClient: 3}}})
	addr := strings.TrimPrefix(e.base, "http://")
	var waiting []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "POST /v1/claims?timeout=3s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		waiting = append(waiting, c)
	}
	testkit.Eventually(t, 2*time.Second, "three claims waiting", func() bool { _, busy := e.api.Connections(); return busy == 3 })
	// Every slot is serving a request: a fourth connection is refused with 503.
	if got := metric4(t, addr); got != http.StatusServiceUnavailable {
		t.Fatalf("a fourth connection: %d, want 503", got)
	}
	for _, c := range waiting {
		if closedByServer(c) {
			t.Fatal("a connection serving a claim was closed to make room")
		}
	}
	// The refusal is counted.
	for _, c := range waiting { // free the slots to scrape
		_ = c.Close()
	}
	// One client holds every slot: its own limit is met first.
	testkit.Eventually(t, 5*time.Second, "client_limit counted", func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		_, _ = io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		b, _ := io.ReadAll(c)
		return strings.Contains(string(b), `sandboxpool_api_rejected_total{reason="client_limit"} `) &&
			!strings.Contains(string(b), `sandboxpool_api_rejected_total{reason="client_limit"} 0`)
	})
}

// metric4 opens one more connection, sends a request and returns the status.
func metric4(t *testing.T, addr string) int {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
