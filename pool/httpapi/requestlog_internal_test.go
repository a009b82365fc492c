package httpapi

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

// TestRequestLogWritesABurstLater: a burst's lines are written together
// after the delay, in order, each with its answer's time and fields (the
// line ServeHTTP writes); flush writes at once; below info nothing is kept.
func TestRequestLogWritesABurstLater(t *testing.T) {
	out := &testkit.SyncBuffer{}
	r := newRequestLog(slog.New(slog.NewTextHandler(out, nil)), 300*time.Millisecond)
	at := time.Date(2026, 12, 2, 21, 0, 0, 0, time.UTC)
	for i := range 45 {
		r.add(requestLine{at: at.Add(time.Duration(i) * time.Millisecond), method: "POST", path: "/v1/claims",
			status: 200, duration: 387 * time.Microsecond, remote: fmt.Sprintf("127.0.0.1:%d", 40000+i), bytes: 111})
	}
	if got := out.String(); got != "" {
		t.Fatalf("written before the delay:\n%s", got)
	}
	// The flush writes line by line: wait for the last one.
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(out.String(), "\n") < 45 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 45 {
		t.Fatalf("%d lines, want 45:\n%s", len(lines), out.String())
	}
	want := `time=2026-12-02T21:00:00.044Z level=INFO msg="http request" method=POST path=/v1/claims status=200 duration=387µs remote=127.0.0.1:40044 bytes=111`
	if lines[44] != want {
		t.Fatalf("last line\n%s\nwant\n%s", lines[44], want)
	}

	r.add(requestLine{at: at, method: "GET", path: "/claim", status: 503})
	r.flush()
	if !strings.Contains(out.String(), "path=/claim status=503") {
		t.Fatalf("flush did not write the line held:\n%s", out.String())
	}

	quiet := &testkit.SyncBuffer{}
	q := newRequestLog(slog.New(slog.NewTextHandler(quiet, &slog.HandlerOptions{Level: slog.LevelWarn})), requestLogDelay)
	q.add(requestLine{at: at, method: "POST", path: "/v1/claims", status: 200})
	if len(q.lines) != 0 {
		t.Fatal("a line kept for a log that drops info")
	}
}
