package local

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

var _ pool.LossWatcher = (*Backend)(nil)

// WatchLoss implements pool.LossWatcher: it keeps a connection open to the
// pool's agent, which the kernel closes when the agent dies. A kill -9 of
// the agent takes every sandbox with it (built-in ones are its goroutines,
// --cmd ones die by Pdeathsig): lost hears it at once, not at the next
// request to an agent (a pass, a probe) nor when a sweep finds the claimed
// ones gone. A clean stop (terminate --all, idle) is no loss. It starts no
// agent; while none runs it waits for one, and returns when ctx ends.
func (b *Backend) WatchLoss(ctx context.Context, lost func(pool.BackendLoss)) {
	say := func(agent int64, at time.Time) func() {
		return func() {
			// Once per agent: said here, or by the note of the next
			// agent's first answer ("a new one runs"), not both.
			if b.agentSeen.CompareAndSwap(agent, 0) {
				lost(pool.BackendLoss{Before: at,
					Why: fmt.Sprintf("the local agent of pool %q died (killed or crashed)", b.opts.Pool)})
			}
		}
	}
	for ctx.Err() == nil {
		c, resp, err := b.dialWatch(ctx)
		if err != nil {
			// An agent this Backend talked to may have died before the
			// watch reached it (killed right after its start): its lock,
			// free without the clean stop's marker, says so.
			if seen := b.agentSeen.Load(); seen != 0 {
				b.agentDied(ctx, seen, say(seen, time.Now()))
			}
			b.waitForAgent(ctx)
			continue
		}
		b.noteAgent(resp) // one that replaced a dead one unwatched is said as before
		agent := resp.Agent
		// Nothing is ever sent on it again: a read ends only with the
		// connection (the agent gone) or with ctx.
		stop := context.AfterFunc(ctx, func() { c.Close() })
		_, _ = c.Read(make([]byte, 1))
		stop()
		c.Close()
		if ctx.Err() != nil {
			return
		}
		b.agentDied(ctx, agent, say(agent, time.Now()))
	}
}

// dialWatch connects to the agent for WatchLoss and learns which one
// answers (its start).
func (b *Backend) dialWatch(ctx context.Context) (net.Conn, response, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(dctx, "unix", b.paths.sock)
	if err != nil {
		return nil, response{}, err
	}
	dl, _ := dctx.Deadline()
	_ = c.SetDeadline(dl)
	resp := response{}
	if _, err = c.Write([]byte(`{"op":"ping"}` + "\n")); err == nil {
		var line []byte
		if line, err = bufio.NewReader(c).ReadBytes('\n'); err == nil {
			err = json.Unmarshal(line, &resp)
		}
	}
	if err != nil || resp.Agent == 0 { // an agent of an earlier build says not which it is
		c.Close()
		return nil, response{}, fmt.Errorf("watch the local agent: %v", err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, resp, nil
}

// waitForAgent waits until an agent may run: one answered this Backend, or
// a second passed (another process may have started one).
func (b *Backend) waitForAgent(ctx context.Context) {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-b.agentNews:
	}
}

// agentDied calls died if the agent that closed the watch connection died:
// it left its lock without the clean stop's marker, or a new agent that
// started since found it dead. An agent that only closed the connection
// still holds its lock and answers.
func (b *Backend) agentDied(ctx context.Context, agent int64, died func()) {
	if f, err := os.OpenFile(b.paths.lock, os.O_RDWR, 0); err == nil {
		defer f.Close()
		// The kernel closes a dead process's files one by one: its lock
		// may be released a moment after its socket.
		if lockBy(ctx, f, time.Now().Add(2*time.Second)) {
			defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
			note, err := os.ReadFile(b.paths.clean)
			if err == nil && string(note) != sweptNote {
				return // stopped cleanly
			}
			died() // first: the sweep scans /proc
			if err != nil {
				// What escaped Pdeathsig goes now, as a sweep does, and the
				// next agent learns that this one died.
				killMarked(syscall.SIGKILL, envAgentMark+"="+b.paths.sock)
				_ = os.WriteFile(b.paths.clean, []byte(sweptNote), 0o600)
			}
			return
		}
	}
	// The lock is held: by the same agent (it closed the connection), or by
	// a new one that another process started.
	c, resp, err := b.dialWatch(ctx)
	if err != nil {
		return // the next dial tells
	}
	c.Close()
	if resp.Agent != agent && resp.AfterCrash {
		died()
	}
}

// lockBy takes f's lock by deadline, unless ctx ends first.
func lockBy(ctx context.Context, f *os.File, deadline time.Time) bool {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return true
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}
