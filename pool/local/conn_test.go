package local

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
	"github.com/sandboxpool/sandboxpool/pool"
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
	t.Cleanup(func() { shutdownAndWait(t, b) })
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

// Creations asked for together go to the agent in one request, each with
// its own answer; an item that fails fails alone.
func TestCreateBatch(t *testing.T) {
	t.Parallel()
	b, err := New(Options{StateDir: t.TempDir(), Pool: "batch", IdleExit: 2 * time.Second, TermGrace: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdownAndWait(t, b) })
	ctx := context.Background()
	const n = 12
	var wg sync.WaitGroup
	refs := make([]pool.Ref, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { refs[i], errs[i] = b.Create(ctx, time.Minute) })
	}
	wg.Wait()
	ids, urls := map[string]bool{}, map[string]bool{}
	for i, r := range refs {
		if errs[i] != nil {
			t.Fatalf("create %d: %v", i, errs[i])
		}
		ids[r.ID], urls[r.URL] = true, true
	}
	if len(ids) != n || len(urls) != n {
		t.Fatalf("%d ids and %d urls for %d creations", len(ids), len(urls), n)
	}
	listed, err := b.List(ctx)
	if err != nil || len(listed) != n {
		t.Fatalf("List: %d sandboxes, %v; want %d", len(listed), err, n)
	}

	good := request{Op: "create", ID: "sb-0123456789ab", TTL: time.Minute}
	resp, err := b.call(ctx, request{Op: opCreateBatch, Batch: []request{
		good, {Op: "create", ID: "nope", TTL: time.Minute}, {Op: "list"}, good,
	}}, false)
	if err != nil || len(resp.Batch) != 4 {
		t.Fatalf("batch: %v, %d answers", err, len(resp.Batch))
	}
	if r := resp.Batch[0]; r.Error != "" || r.Ref.ID != good.ID || r.Ref.URL == "" {
		t.Errorf("good item: %+v", r)
	}
	for i, want := range []string{"bad sandbox id", `op "list"`, "exists"} {
		if r := resp.Batch[i+1]; !strings.Contains(r.Error, want) {
			t.Errorf("item %d: %+v, want an error saying %q", i+1, r, want)
		}
	}
	// An older agent answers a batch as any op it does not know.
	old := (&agent{}).handle(request{Op: "no-such-op"}).Error
	if want := strings.ReplaceAll(old, "no-such-op", opCreateBatch); !isUnknownOp(fmt.Errorf("%s", want)) {
		t.Errorf("an older agent's answer %q is not recognised", want)
	}
}

// shutdownAndWait stops b's agent and waits until it is gone: it writes to
// the state dir as it exits, which the test's TempDir cleanup removes.
func shutdownAndWait(t *testing.T, b *Backend) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	agent, _ := b.call(ctx, request{Op: "ping"}, false) // no agent: nothing to wait for
	if err := b.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	b.dropIdle()
	if agent.Pid > 0 {
		testkit.Eventually(t, 20*time.Second, "the agent gone", func() bool { return !testkit.Alive(agent.Pid) })
	}
}
