package httpapi_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A body over MaxBodyBytes gets its 400 and its reason, not a connection
// reset: the server reads (and drops) what the client sends before it
// answers and closes, as net/http does. Closing with the body unread reset
// the connection, and the client, still writing it, never read the answer.
func TestOversizedBodyGetsItsAnswer(t *testing.T) {
	e := newEnv(t, envOpts{size: 0})
	body := `{"size":1,` + strings.Repeat(" ", 1<<20) + `}`
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "PUT /v1/pool/size HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body); err != nil {
		t.Fatalf("writing the body: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(answer), "body: larger than") {
		t.Fatalf("%d %s, want 400 saying the body is too large", resp.StatusCode, answer)
	}
}
