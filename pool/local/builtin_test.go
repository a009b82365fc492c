package local

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// startBuiltinPair serves the built-in handler with the built-in server
// and, for comparison, with net/http's Server as the agent did before.
func startBuiltinPair(t *testing.T) (lean *builtinServer, leanAddr, stdAddr string) {
	t.Helper()
	at := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	h := builtinHandler{readme: "sandboxpool local sandbox sb-0123456789ab\npool: p\n", at: at}
	lean = &builtinServer{h: h, log: io.Discard}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go lean.serve(ln)
	t.Cleanup(lean.close)
	std := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	sln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = std.Serve(sln) }()
	t.Cleanup(func() { std.Close() })
	return lean, ln.Addr().String(), sln.Addr().String()
}

// exchange writes raw to a new connection to addr and reads n answers; it
// reports whether the server closed the connection after them.
func exchange(t *testing.T, addr, raw string, method string, n int) (resps []*http.Response, bodies []string, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for range n {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%q to %s: %v", raw, addr, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%q to %s: body: %v", raw, addr, err)
		}
		resps, bodies = append(resps, resp), append(bodies, string(body))
	}
	// Closed: EOF at once; kept: the read waits (cut short here).
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	_, err = br.ReadByte()
	return resps, bodies, err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// TestBuiltinServerAnswersAsNetHTTP: the built-in workload's own server
// answers what net/http's Server answered with the same handler: status,
// body, the headers a client uses, and whether the connection stays open.
func TestBuiltinServerAnswersAsNetHTTP(t *testing.T) {
	_, lean, std := startBuiltinPair(t)
	cases := []struct {
		name, raw, method string
		answers           int
	}{
		{"listing", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "GET", 1},
		{"head", "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", "HEAD", 1},
		{"readme", "GET /README.txt HTTP/1.1\r\nHost: x\r\n\r\n", "GET", 1},
		{"head readme", "HEAD /README.txt HTTP/1.1\r\nHost: x\r\n\r\n", "HEAD", 1},
		{"range", "GET /README.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n", "GET", 1},
		{"bad range", "GET /README.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=900-\r\n\r\n", "GET", 1},
		{"not modified", "GET /README.txt HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: Wed, 02 Dec 2026 10:00:00 GMT\r\n\r\n", "GET", 1},
		{"not found", "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", "GET", 1},
		{"head not found", "HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n", "HEAD", 1},
		{"query", "GET /?a=1 HTTP/1.1\r\nHost: x\r\n\r\n", "GET", 1},
		{"post with a body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", "POST", 1},
		{"chunked body", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "POST", 1},
		{"pipelined", "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /README.txt HTTP/1.1\r\nHost: x\r\n\r\n", "GET", 2},
		{"connection close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "GET", 1},
		{"http/1.0", "GET / HTTP/1.0\r\n\r\n", "GET", 1},
		{"no host", "GET / HTTP/1.1\r\n\r\n", "GET", 1},
		{"garbage", "NOT HTTP AT ALL\r\n\r\n", "GET", 1},
		{"http/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "GET", 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			want, wantBody, wantClosed := exchange(t, std, tc.raw, tc.method, tc.answers)
			got, gotBody, gotClosed := exchange(t, lean, tc.raw, tc.method, tc.answers)
			for i := range want {
				if got[i].StatusCode != want[i].StatusCode {
					t.Errorf("answer %d: status %d, net/http %d", i, got[i].StatusCode, want[i].StatusCode)
				}
				if gotBody[i] != wantBody[i] {
					t.Errorf("answer %d: body %q, net/http %q", i, gotBody[i], wantBody[i])
				}
				for _, k := range []string{"Content-Type", "Content-Length", "Content-Range", "Last-Modified", "Accept-Ranges", "X-Content-Type-Options"} {
					if g, w := got[i].Header.Get(k), want[i].Header.Get(k); g != w {
						t.Errorf("answer %d: %s %q, net/http %q", i, k, g, w)
					}
				}
				if got[i].ContentLength != want[i].ContentLength {
					t.Errorf("answer %d: length %d, net/http %d", i, got[i].ContentLength, want[i].ContentLength)
				}
				if (got[i].Header.Get("Date") == "") != (want[i].Header.Get("Date") == "") {
					t.Errorf("answer %d: Date %q, net/http %q", i, got[i].Header.Get("Date"), want[i].Header.Get("Date"))
				}
			}
			if gotClosed != wantClosed {
				t.Errorf("connection closed %v, net/http %v", gotClosed, wantClosed)
			}
		})
	}
}

// TestBuiltinServerKeepsConnections: a client's requests go over one kept
// connection, as a health checker's do; closing the server closes it and
// the listener.
func TestBuiltinServerKeepsConnections(t *testing.T) {
	srv, addr, _ := startBuiltinPair(t)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	reused := 0
	for i := range 5 {
		trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
			if ci.Reused {
				reused++
			}
		}}
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Contains(body, []byte("README.txt")) {
			t.Fatalf("GET %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if reused != 4 {
		t.Fatalf("%d of 4 later requests reused the connection", reused)
	}
	// An idle connection of a raw client, then the server closes.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	srv.close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("read on a connection of a closed server: %v, want EOF", err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("a closed server still accepts")
	}
	srv.mu.Lock()
	left := len(srv.conns)
	srv.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d connections still tracked after close", left)
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// TestBuiltinServerLimits: a header past net/http's limit gets 431, a body
// past what is dropped closes the connection after the answer, and a
// connection that says nothing is answered nothing.
func TestBuiltinServerLimits(t *testing.T) {
	_, addr, _ := startBuiltinPair(t)
	big := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", http.DefaultMaxHeaderBytes+8192) + "\r\n\r\n"
	resps, _, closed := exchange(t, addr, big, "GET", 1)
	if resps[0].StatusCode != http.StatusRequestHeaderFieldsTooLarge || !closed {
		t.Fatalf("a header too big: %d (closed %v), want 431 and closed", resps[0].StatusCode, closed)
	}
	body := strings.Repeat("b", builtinMaxDiscard+1)
	resps, _, closed = exchange(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body, "POST", 1)
	if resps[0].StatusCode != 200 || !closed {
		t.Fatalf("a big body: %d (closed %v), want 200 and closed", resps[0].StatusCode, closed)
	}
	resps, _, closed = exchange(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", "POST", 1)
	if resps[0].StatusCode != 200 || !closed {
		t.Fatalf("a body waiting for 100 Continue: %d (closed %v), want 200 and closed", resps[0].StatusCode, closed)
	}
}
