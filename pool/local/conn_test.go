package local

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

// A Backend keeps its connection to the agent between calls, closes it once
// unused for keepIdle (an idle agent must see no caller), and the agent
// bounds each request, not the connection: a kept one outlives 4 MiB.
func TestKeptConnection(t *testing.T) {
	t.Parallel()
	b, err := New(Options{StateDir: t.TempDir(), Pool: "kept", IdleExit: 2 * time.Second, TermGrace: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		b.dropIdle()
	})
	ctx := context.Background()
	if _, err := b.AgentPid(ctx); err != nil {
		t.Fatal(err)
	}
	kept := func() []*agentConn {
		b.connMu.Lock()
		defer b.connMu.Unlock()
		return append([]*agentConn(nil), b.idle...)
	}
	first := kept()
	if len(first) != 1 {
		t.Fatalf("%d connections kept after a call, want 1", len(first))
	}
	for range 20 {
		if _, err := b.List(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if now := kept(); len(now) != 1 || now[0] != first[0] {
		t.Fatalf("sequential calls used %d other connections, want the kept one", len(now))
	}
	testkit.Eventually(t, 10*time.Second, "the connection unused for keepIdle closed", func() bool { return len(kept()) == 0 })

	c, err := net.Dial("unix", b.paths.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	big, _ := json.Marshal(request{Op: "ping", Cmd: strings.Repeat("x", 1<<20)})
	r := bufio.NewReader(c)
	for i := range 6 { // 6 MiB on one connection
		if _, err := c.Write(append(big, '\n')); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		line, err := r.ReadBytes('\n')
		var resp response
		if err == nil {
			err = json.Unmarshal(line, &resp)
		}
		if err != nil || resp.Error != "" || resp.Pid == 0 {
			t.Fatalf("request %d: %v %+v", i, err, resp)
		}
	}
}
