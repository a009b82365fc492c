package httpapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

// What the server itself (not the http.Handler) must do: these go over raw
// connections to the served API.

func dialAPI(t *testing.T, e *env) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// A connection that sends part of a request and stops is closed by the
// server (ReadTimeout), whatever it holds.
func TestServedSlowRequestIsClosed(t *testing.T) {
	e := newEnv(t, envOpts{size: 0})
	c := dialAPI(t, e)
	if _, err := io.WriteString(c, "GET /v1/pool HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(httpapi.ReadTimeout + 10*time.Second))
	_, err := io.ReadAll(c) // an answer (408) or none, then the end
	if err != nil {
		t.Fatalf("the server did not close a connection that stopped mid-request: %v", err)
	}
}

// Headers past MaxHeaderBytes: 431 in JSON, nothing served.
func TestServedHeadersTooLarge(t *testing.T) {
	e := newEnv(t, envOpts{size: 1, fill: true})
	r := e.do("POST", "/v1/claims", "", "X-Big", strings.Repeat("a", httpapi.MaxHeaderBytes))
	if r.status != http.StatusRequestHeaderFieldsTooLarge || !strings.Contains(r.errorText(t), "headers") {
		t.Fatalf("%d %s, want 431", r.status, r.body)
	}
	if n := e.ctrl.Snapshot().Counts[pool.StateClaimed]; n != 0 {
		t.Fatalf("%d claimed", n)
	}
}

// A waiting GET /claim whose client closes its connection takes nothing:
// the server notices while it waits (fasthttp reads nothing meanwhile).
func TestServedSeedClaimClientGoneTakesNothing(t *testing.T) {
	e := newEnv(t, envOpts{size: 0})
	c := dialAPI(t, e)
	if _, err := io.WriteString(c, "GET /claim?timeout=30s HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	waitClaimWaiting(t, e)
	_ = c.Close()
	if s := afterAbandonedClaim(t, e); s.Counts[pool.StateClaimed] != 0 || s.Stats.ClaimsWarm+s.Stats.ClaimsWaited != 0 {
		t.Fatalf("a claim for nobody: %v %+v", s.Counts, s.Stats)
	}
	testkit.Eventually(t, 5*time.Second, "the abandoned claim logged as 499", func() bool {
		return strings.Contains(e.logs.String(), "path=/claim status=499")
	})
}

// A client that sends its next request while its claim waits has not gone:
// the watch only peeks, so the claim is answered and the next request read
// whole after it.
func TestServedPipelinedRequestWhileClaimWaits(t *testing.T) {
	e := newEnv(t, envOpts{size: 0})
	c := dialAPI(t, e)
	if _, err := io.WriteString(c, "POST /v1/claims?timeout=30s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	waitClaimWaiting(t, e)
	// The watch has started: the next request must not end the claim.
	testkit.Eventually(t, 5*time.Second, "the claim's connection watched", func() bool { return httpapi.WatchesStarted() > 0 })
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := e.ctrl.Resize(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if err := e.ctrl.Maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	var v httpapi.ClaimView
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &v) != nil || v.ID == "" {
		t.Fatalf("the waiting claim: %d %s", resp.StatusCode, body)
	}
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"ok"`) {
		t.Fatalf("the request sent while the claim waited: %d %s", resp.StatusCode, body)
	}
}

// Every answer of a keep-alive connection is followed by its own log line
// (written once the answer is sent), claims and other routes alike.
func TestServedLogLinePerRequest(t *testing.T) {
	e := newEnv(t, envOpts{size: 3, fill: true})
	for range 3 {
		if r := e.do("POST", "/v1/claims", ""); r.status != http.StatusOK {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if r := e.do("GET", "/v1/pool", ""); r.status != http.StatusOK {
			t.Fatalf("%d %s", r.status, r.body)
		}
	}
	testkit.Eventually(t, 5*time.Second, "3 claim lines and 3 pool lines", func() bool {
		l := e.logs.String()
		return strings.Count(l, "method=POST path=/v1/claims status=200") == 3 && strings.Count(l, "method=GET path=/v1/pool status=200") == 3
	})
}

// Stopping the server closes its idle keep-alive connections: they do not
// hold the shutdown up.
func TestServedShutdownClosesIdleConnections(t *testing.T) {
	e := newEnv(t, envOpts{size: 0})
	c := dialAPI(t, e)
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	start := time.Now()
	e.stop()
	if err := <-e.errc; err != nil {
		t.Fatal(err)
	}
	// Not cut at the end of ShutdownTimeout: closed as idle at once.
	if took := time.Since(start); took >= httpapi.ShutdownTimeout {
		t.Fatalf("an idle connection held the shutdown %s", took)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the idle connection after the shutdown: read %d, %v, want EOF", n, err)
	}
}
