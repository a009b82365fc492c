package claimload

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Floor measures the physical floor under a claim: n keep-alive HTTP GET
// round trips on loopback to an empty handler at base, gap apart from one
// start to the next (0: back to back). Paced round trips cost far more than
// back-to-back ones: both sides' threads sleep between them, and each round
// trip pays their wake-ups; a paced claim is read against the paced floor.
func Floor(ctx context.Context, base string, n int, gap time.Duration) (Result, error) {
	c := NewClient(base)
	var res Result
	start := time.Now()
	next := start
	for i := 0; i < n && ctx.Err() == nil; i++ {
		sleepUntil(ctx, next)
		next = next.Add(gap)
		t := time.Now()
		err := c.get(ctx, "/")
		res.Claims++
		if err != nil {
			res.Errors++
			if res.FirstErr == "" {
				res.FirstErr = err.Error()
			}
			continue
		}
		res.Latency = append(res.Latency, time.Since(t))
	}
	res.Elapsed = time.Since(start)
	return res, ctx.Err()
}

// FloorBurst is Floor for bursts: clients concurrent clients share n round
// trips to the empty handler at base, started together, repeat times. On a
// machine with few cores, concurrent round trips queue for them even when
// the server does nothing: a burst of claims is read against this.
// With connect, the clients' connections are opened first (Client.Connect)
// and kept; without, every burst is on new connections.
func FloorBurst(ctx context.Context, base string, clients, n, repeat int, connect bool) (Result, error) {
	c := NewClient(base)
	if connect {
		if err := c.Connect(ctx, clients, "/"); err != nil {
			return Result{}, err
		}
	}
	rec := &recorder{}
	start := time.Now()
	for range repeat {
		if !connect {
			c.Close()
			c = NewClient(base)
		}
		c.burst(ctx, rec, clients, n, func(ctx context.Context) (time.Duration, error) {
			t := time.Now()
			err := c.get(ctx, "/")
			return time.Since(t), err
		})
	}
	rec.res.Elapsed = time.Since(start)
	return rec.res, ctx.Err()
}

// ServeFloor serves the empty handler that Floor measures on ln, until it fails.
func ServeFloor(ln net.Listener) error {
	return http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
}

// FloorServerMode is the argument that makes StartFloorServer's child serve.
const FloorServerMode = "floor-serve"

// StartFloorServer runs the empty handler in a child process (exe
// FloorServerMode, which must call ServeFloor and print its address on a
// line): a claim crosses processes, and so does its floor (in one process,
// a paced round trip skips a wake-up and reads ~0.3 ms lower). stop kills it.
func StartFloorServer(ctx context.Context, exe string) (base string, stop func(), err error) {
	cmd := exec.CommandContext(ctx, exe, FloorServerMode)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop = func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	addr := strings.TrimSpace(line)
	if err != nil || addr == "" {
		stop()
		return "", nil, fmt.Errorf("floor server: no address (%v)", err)
	}
	return "http://" + addr, stop, nil
}
