// Package local is the default sandboxpool backend: one detached local agent
// per pool (this binary re-executed, started on first need, outliving every
// controller) runs the pool's sandboxes on this machine. Controllers and
// other processes talk to it over a unix socket in the state dir.
//
// The built-in workload is served from inside the agent on a loopback port
// per sandbox; a --cmd workload is a direct child of the agent in its own
// process group. The agent kills each sandbox at expiry, reaps and kills
// what a workload left behind (it is a child subreaper), and when it dies
// its --cmd children die with it (Pdeathsig). It answers only its own user.
//
// Which sandboxes are claimed the agent keeps in a claim table in shared
// memory (package claimtable), which it hands to every Backend that lists:
// a claim is a compare-and-swap there, with no round trip, and the agent
// reads the table in every decision about a claim.
//
// Layout under <StateDir>:
//
//	<pool>.agent.sock   the agent's socket
//	<pool>.agent.lock   held by the live agent
//	<pool>.agent.start  held while a process starts the agent
//	<pool>.agent.log    the agent's own log
//	<pool>.agent.clean  no agent runs, and nothing of the last one is left
//	<pool>.sandboxes/   <id>/ (a --cmd workload's directory), <id>.log[.1] (a log past 2 KB)
package local

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
	"golang.org/x/sys/unix"
)

// DefaultLogMax caps each sandbox's log (both parts together).
const DefaultLogMax = 10 << 20

// Options configure a Backend.
type Options struct {
	// Pool names the pool; StateDir holds its agent's socket and files.
	Pool     string
	StateDir string
	// Cmd, when set, is run via /bin/sh -c instead of the built-in server,
	// with {port} replaced and PORT set.
	Cmd string
	// Warmup is how long the built-in server waits before it listens.
	Warmup time.Duration
	// Exe is the binary re-executed as the agent; default os.Executable().
	// It must call MaybeRunChild first thing.
	Exe string
	// TermGrace is how long Terminate waits after SIGTERM before SIGKILL; default 1s.
	TermGrace time.Duration
	// LogMax caps each sandbox's log; default DefaultLogMax. The pool's logs
	// together are capped at 64 times that.
	LogMax int64
	// IdleExit is how long an agent started by this Backend lives with no
	// sandbox and no caller; default 30s.
	IdleExit time.Duration
	// Prestart starts the agent in the background at New, so that a
	// controller's first creations do not wait for it.
	Prestart bool
	// Prefault maps every page of the agent's claim table and notes in
	// this process when it maps them, so that a claim never faults a page
	// in (claimtable's Prefault): for a controller, which claims for
	// its whole life, not a one-off command.
	Prefault bool
}

// Backend is a client of the pool's agent. It keeps no state: several
// Backends, in one process or many, share a pool through its agent.
type Backend struct {
	opts    Options
	paths   paths
	startMu sync.Mutex

	// Connections to the agent kept open between calls: dialling (and the
	// agent's accept and peer check) cost more than a small request. One
	// unused for keepIdle is closed, so an idle agent still sees no caller.
	connMu   sync.Mutex
	idle     []*agentConn // most recently used last
	reaping  bool         // a reapIdle is scheduled
	keepIdle time.Duration

	creates createBatcher

	// What Create starts now: the options' until the pool's stored one
	// is used (UseWorkload). hadCmd: some sandbox of this Backend may run
	// a command, which can exit on its own.
	work   atomic.Pointer[workload]
	hadCmd atomic.Bool

	// agentSeen is the agent that answered last (its start); notify is
	// told when a new one replaced a dead one (NotifyTo).
	agentSeen atomic.Int64
	notify    atomic.Pointer[func(string)]
	agentNews chan struct{} // a new agent answered (WatchLoss waits for one)

	// The agent's claim table, mapped by a list (off the claim path): a
	// claim is then a CAS in shared memory (TryClaimOnce).
	table     atomic.Pointer[agentTable]
	tableMu   sync.Mutex // held by the one mapping it
	tableNext time.Time  // no table from this agent (an older one): asked again after
}

// agentConn is one connection to the agent, one request at a time.
type agentConn struct {
	c    net.Conn
	r    *bufio.Reader
	used time.Time
}

// maxIdleConns bounds the connections kept open: about the claims and
// creations that talk to the agent at once.
const maxIdleConns = 32

var (
	_ pool.Backend          = (*Backend)(nil)
	_ pool.ClaimRecorder    = (*Backend)(nil)
	_ pool.ClaimGate        = (*Backend)(nil)
	_ pool.QuickClaimGate   = (*Backend)(nil)
	_ pool.PooledTerminator = (*Backend)(nil)
	_ pool.LogReader        = (*Backend)(nil)
	_ pool.ExitWatcher      = (*Backend)(nil)
	_ pool.BackendNotifier  = (*Backend)(nil)
)

// New checks the options and makes the state dir (private to the user).
// The agent starts on the first call that needs it.
func New(opts Options) (*Backend, error) {
	if err := pool.ValidatePoolName(opts.Pool); err != nil {
		return nil, err
	}
	if opts.StateDir == "" {
		return nil, errors.New("local backend: no state dir")
	}
	if opts.Warmup < 0 {
		return nil, fmt.Errorf("--warmup %s: must be 0 or more", opts.Warmup)
	}
	if opts.LogMax < 0 {
		return nil, fmt.Errorf("--log-max %d: must be 0 (the default) or more", opts.LogMax)
	}
	var err error
	if opts.Exe == "" {
		if opts.Exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("local backend: find own binary: %w", err)
		}
	}
	if opts.Exe, err = filepath.Abs(opts.Exe); err != nil {
		return nil, err
	}
	if opts.StateDir, err = filepath.Abs(opts.StateDir); err != nil {
		return nil, err
	}
	if opts.TermGrace <= 0 {
		opts.TermGrace = time.Second
	}
	if opts.LogMax == 0 {
		opts.LogMax = DefaultLogMax
	}
	if opts.IdleExit <= 0 {
		opts.IdleExit = 30 * time.Second
	}
	p := poolPaths(opts.StateDir, opts.Pool)
	if len(p.sock) >= len(syscall.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("local backend: --state-dir %s is too long for a unix socket path; choose a shorter one", opts.StateDir)
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("local backend: %w", err)
	}
	b := &Backend{opts: opts, paths: p, keepIdle: min(time.Second, opts.IdleExit/4), agentNews: make(chan struct{}, 1)}
	b.setWorkload(newWorkload(opts.Cmd, opts.Warmup))
	if opts.Prestart {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := b.roundTrip(ctx, request{Op: "ping"}); isNoAgent(err) {
				_ = b.ensureAgent(ctx) // a failure shows at the first Create
			}
		}()
	}
	return b, nil
}

// Name is "local".
func (b *Backend) Name() string { return "local" }

// Dir is the directory of the pool's sandboxes (their directories and logs).
func (b *Backend) Dir() string { return b.paths.boxes }

// Create asks the agent (started if none runs) for a sandbox and returns as
// soon as its URL is known.
func (b *Backend) Create(ctx context.Context, ttl time.Duration) (pool.Ref, error) {
	if ttl <= 0 {
		return pool.Ref{}, fmt.Errorf("local backend: ttl %s must be positive", ttl)
	}
	if err := ctx.Err(); err != nil {
		return pool.Ref{}, err
	}
	id, err := newID()
	if err != nil {
		return pool.Ref{}, err
	}
	w := b.work.Load()
	req := request{Op: "create", ID: id, TTL: ttl, Cmd: w.Cmd, Warmup: w.warmup(), Grace: b.opts.TermGrace, LogMax: b.opts.LogMax}
	if w.Cmd != "" {
		req.Env = cleanEnv() // the workload runs in the caller's environment, not the agent's
	}
	resp, err := b.creates.do(ctx, b, req)
	if err != nil {
		// The agent may have made it before we gave up; a terminate that
		// comes first keeps the id from ever being created.
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.opts.TermGrace+5*time.Second)
		_ = b.Terminate(tctx, id)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return pool.Ref{}, err
		}
		return pool.Ref{}, fmt.Errorf("local backend: %w", err)
	}
	// The claim table of the agent that made it: a pool's first claims come
	// right after its first creations, before any pass lists (a pass's list
	// before the agent started maps nothing, and the next is a maintenance
	// interval away). Once per agent; a no-op after.
	b.mapTable(ctx)
	return resp.Ref.ref(), nil
}

func (w wireRef) ref() pool.Ref {
	return pool.Ref{ID: w.ID, URL: w.URL, CreatedAt: w.CreatedAt, ExpiresAt: w.ExpiresAt, Claimed: w.Claimed, Workload: w.Workload}
}

// Terminate stops a sandbox: SIGTERM, SIGKILL after TermGrace, to all its
// processes, even those that left its group. Unknown ids are not an error.
func (b *Backend) Terminate(ctx context.Context, id string) error {
	if !validID(id) {
		return nil
	}
	_, err := b.call(ctx, request{Op: "terminate", ID: id, Grace: b.opts.TermGrace}, false)
	if errors.Is(err, errNoAgent) {
		return nil
	}
	return err
}

// TerminatePooled implements pool.PooledTerminator: Terminate, unless the
// agent's record says a claim holds the sandbox (pool.ErrAlreadyClaimed) or
// it had ended already (pool.ErrNotFound).
func (b *Backend) TerminatePooled(ctx context.Context, id string) error {
	if !validID(id) {
		return nil
	}
	_, err := b.call(ctx, request{Op: "terminate", ID: id, Grace: b.opts.TermGrace, Once: true}, false)
	switch {
	case errors.Is(err, errNoAgent):
		return nil
	case errors.Is(err, pool.ErrAlreadyClaimed), errors.Is(err, pool.ErrNotFound):
		return err
	case err != nil:
		return fmt.Errorf("local backend: %w", err)
	}
	return nil
}

// List returns the pool's running sandboxes, oldest first; claimed ones
// have Ref.Claimed set. With no agent running, nothing runs.
func (b *Backend) List(ctx context.Context) ([]pool.Ref, error) {
	resp, err := b.call(ctx, request{Op: "list"}, false)
	if errors.Is(err, errNoAgent) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("local backend: %w", err)
	}
	b.mapTable(ctx)
	refs := make([]pool.Ref, len(resp.Refs))
	for i, w := range resp.Refs {
		refs[i] = w.ref()
	}
	return refs, nil
}

// ListChanges lists the pool's unclaimed running sandboxes and what
// changed among the claimed ones since the cursor (pool.ChangeLister); the
// full list, with Full set, for a cursor the agent cannot answer (the zero
// one, another agent's, one too old) or from an agent that does not know
// the question. With no agent running, nothing runs.
func (b *Backend) ListChanges(ctx context.Context, since pool.ListCursor) (pool.Listing, error) {
	resp, err := b.call(ctx, request{Op: "list", Changes: true, Epoch: since.Epoch, Since: since.Seq}, false)
	if errors.Is(err, errNoAgent) {
		return pool.Listing{Full: true}, nil
	}
	if err != nil {
		return pool.Listing{}, fmt.Errorf("local backend: %w", err)
	}
	b.mapTable(ctx)
	l := pool.Listing{Full: resp.Full || resp.Epoch == 0, Ended: resp.Ended, Next: pool.ListCursor{Epoch: resp.Epoch, Seq: resp.Seq}}
	l.Refs = make([]pool.Ref, len(resp.Refs))
	for i, w := range resp.Refs {
		l.Refs[i] = w.ref()
	}
	if l.Full {
		l.Ended = nil
	}
	return l, nil
}

// SandboxesEndOnlyWithBackend implements pool.SelfContained: a built-in
// sandbox is a socket and a goroutine of the agent, which ends only when
// terminated or with the agent; a --cmd workload may exit at any time (and
// one this Backend started before its workload changed may still run).
func (b *Backend) SandboxesEndOnlyWithBackend() bool { return !b.hadCmd.Load() }

// MarkClaimed records in the agent that the sandbox was handed out: List
// reports it claimed from then on, whatever happens to the store.
func (b *Backend) MarkClaimed(ctx context.Context, id, by string) error {
	_, err := b.call(ctx, request{Op: "claimed", ID: id, By: by}, false)
	if errors.Is(err, errNoAgent) {
		err = fmt.Errorf("%w: %s (no local agent runs)", pool.ErrNotFound, id)
	}
	if err != nil {
		return fmt.Errorf("local backend: %w", err)
	}
	return nil
}

// MarkClaimedOnce implements pool.ClaimGate: the agent records the claim
// unless another claim holds the sandbox (pool.ErrAlreadyClaimed).
func (b *Backend) MarkClaimedOnce(ctx context.Context, e pool.Entry) error {
	_, err := b.call(ctx, request{Op: "claimed", ID: e.ID, By: e.ClaimedBy, At: e.ClaimedAt, Once: true}, false)
	if errors.Is(err, errNoAgent) {
		err = fmt.Errorf("%w: %s (no local agent runs)", pool.ErrNotFound, e.ID)
	}
	if err != nil {
		return fmt.Errorf("local backend: %w", err)
	}
	return nil
}

// ReadLog reads the sandbox's output: up to max bytes from offset (offset
// < 0: the last max bytes), and the offset just after them. Offsets count
// what was kept, across rotations.
func (b *Backend) ReadLog(ctx context.Context, id string, offset int64, max int) ([]byte, int64, error) {
	resp, err := b.call(ctx, request{Op: "log", ID: id, Offset: offset, Max: max}, false)
	if errors.Is(err, errNoAgent) {
		err = fmt.Errorf("%w: %s (no local agent runs)", pool.ErrNotFound, id)
	}
	if err != nil {
		return nil, offset, fmt.Errorf("local backend: %w", err)
	}
	return resp.Data, resp.Next, nil
}

// Exited reports whether the sandbox's workload has exited, with its exit
// code and last lines of output. A sandbox the agent does not know (or no
// agent) has exited.
func (b *Backend) Exited(ctx context.Context, id string) (bool, pool.ExitInfo, error) {
	resp, err := b.call(ctx, request{Op: "exited", ID: id}, false)
	if errors.Is(err, errNoAgent) {
		return true, pool.ExitInfo{Code: -1, Unknown: true, Tail: "(no local agent runs: the sandbox is gone)"}, nil
	}
	if err != nil {
		return false, pool.ExitInfo{}, fmt.Errorf("local backend: %w", err)
	}
	return resp.Exited, pool.ExitInfo{Code: resp.Code, Tail: resp.Tail, Unknown: resp.Unknown}, nil
}

// Shutdown terminates every sandbox of the pool and stops its agent.
func (b *Backend) Shutdown(ctx context.Context) error {
	_, err := b.call(ctx, request{Op: "shutdown", Grace: b.opts.TermGrace}, false)
	if err != nil && !errors.Is(err, errNoAgent) && !isBroken(err) {
		return err
	}
	// The agent answers, then exits (its last sandboxes, its files): once
	// this returns, nothing of the pool runs nor writes in the state dir.
	// No agent to answer may be one exiting already (its socket gone, its
	// clean-exit marker not yet written): it holds the lock until its end.
	f, err := os.OpenFile(b.paths.lock, os.O_RDWR, 0)
	if err != nil {
		return nil // no agent ever ran here
	}
	defer f.Close()
	deadline := time.Now().Add(b.opts.TermGrace + 5*time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if flockWait(f, syscall.LOCK_EX, deadline) == nil {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	} // else: slow, or a new agent took the lock since; the pool is torn down either way
	return nil
}

// Kill makes a sandbox die abruptly, as a crash would (its built-in server
// stops, or its processes get SIGKILL); the agent then sees it exited. For
// tests and fault injection.
func (b *Backend) Kill(ctx context.Context, id string) error {
	_, err := b.call(ctx, request{Op: "kill", ID: id}, false)
	return err
}

// AgentPid is the pid of the pool's agent, starting it if none runs.
func (b *Backend) AgentPid(ctx context.Context) (int, error) {
	resp, err := b.call(ctx, request{Op: "ping"}, true)
	return resp.Pid, err
}

// Pids returns the live processes of a --cmd sandbox, wherever they went
// (other groups, sessions or parents): every one carries its mark. A
// built-in sandbox has none of its own.
func (b *Backend) Pids(id string) []int {
	return markedPids(envSandbox+"="+id, envAgentMark+"="+b.paths.sock)
}

// errNoAgent says that no agent runs for the pool.
var errNoAgent = errors.New("no local agent runs")

// call sends one request, starting the agent first when start is set and
// none answers. A connection that breaks (an agent that died or was just
// exiting) is retried against a new agent.
func (b *Backend) call(ctx context.Context, req request, start bool) (response, error) {
	for attempt := 0; ; attempt++ {
		resp, err := b.roundTrip(ctx, req)
		if err == nil {
			switch {
			case resp.NotFound:
				return resp, fmt.Errorf("%w: %s", pool.ErrNotFound, resp.Error)
			case resp.AlreadyClaimed:
				return resp, fmt.Errorf("%w: %s", pool.ErrAlreadyClaimed, resp.Error)
			case resp.Error != "":
				return resp, errors.New(resp.Error)
			}
			return resp, nil
		}
		if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
			return response{}, err
		}
		// No agent is an answer, on any attempt (after broken kept
		// connections too): only the retry count bounds the rest.
		if !start && isNoAgent(err) {
			b.sweep()
			return response{}, errNoAgent
		}
		if attempt >= 2 || !(isNoAgent(err) || isBroken(err)) {
			return response{}, err
		}
		if !start {
			continue
		}
		if err := b.ensureAgent(ctx); err != nil {
			return response{}, err
		}
	}
}

type noAgentError struct{ err error }

func (e noAgentError) Error() string { return e.err.Error() }
func (e noAgentError) Unwrap() error { return e.err }

func isNoAgent(err error) bool {
	var n noAgentError
	return errors.As(err, &n)
}

// isBroken is a connection that ended before the answer.
func isBroken(err error) bool {
	return errors.Is(err, errBroken)
}

var errBroken = errors.New("the local agent closed the connection")

func (b *Backend) roundTrip(ctx context.Context, req request) (response, error) {
	data, err := json.Marshal(req)
	if err != nil {
		return response{}, err
	}
	data = append(data, '\n')
	if ac := b.takeIdle(); ac != nil {
		resp, sent, err := b.exchange(ctx, ac, data)
		if err == nil || sent || ctx.Err() != nil {
			return resp, err
		}
		// A kept connection that failed before the request left it: its
		// agent is gone (or closed it), and so are the other kept ones.
		b.dropIdle()
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", b.paths.sock)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return response{}, noAgentError{err}
		}
		return response{}, err
	}
	resp, _, err := b.exchange(ctx, &agentConn{c: c, r: bufio.NewReader(c)}, data)
	return resp, err
}

// sweptNote is what a Backend's sweep writes in the clean file: the agent
// was dead (AfterCrash).
const sweptNote = "swept after the agent died\n"

// NotifyTo implements pool.BackendNotifier: fn hears that the pool's agent
// died and a new one runs, once per new agent this Backend talks to.
func (b *Backend) NotifyTo(fn func(message string)) { b.notify.Store(&fn) }

// noteAgent notes which agent answered: one that replaced an agent this
// Backend talked to, which died, is news.
func (b *Backend) noteAgent(r response) {
	if r.Agent == 0 {
		return // an agent of an earlier build
	}
	prev := b.agentSeen.Swap(r.Agent)
	if prev != r.Agent {
		select {
		case b.agentNews <- struct{}{}:
		default:
		}
	}
	if prev == 0 || prev == r.Agent || !r.AfterCrash {
		return
	}
	if fn := b.notify.Load(); fn != nil {
		(*fn)(fmt.Sprintf("the local agent of pool %q died (killed or crashed) and a new one runs: every sandbox the old one ran ended with it", b.opts.Pool))
	}
}

// exchange sends one request line on ac and reads the answer; ac goes back
// to the idle set after a clean exchange and is closed otherwise. sent says
// whether the request may have reached the agent.
func (b *Backend) exchange(ctx context.Context, ac *agentConn, data []byte) (resp response, sent bool, err error) {
	dl, _ := ctx.Deadline() // zero: none, clearing the last call's
	_ = ac.c.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = ac.c.SetDeadline(time.Unix(1, 0)) })
	ok := false
	defer func() {
		if stop() && ok {
			b.putIdle(ac)
		} else {
			ac.c.Close()
		}
	}()
	if n, err := ac.c.Write(data); err != nil {
		if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
			return response{}, n > 0, context.DeadlineExceeded
		}
		return response{}, n > 0, fmt.Errorf("%w: %v", errBroken, err)
	}
	line, err := ac.r.ReadBytes('\n')
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
			// The context's own timer may not have fired yet.
			return response{}, true, context.DeadlineExceeded
		}
		// Nothing read at all: the agent closed the connection before it
		// took the request (an agent that exited while it was kept idle).
		return response{}, len(line) > 0 || !errors.Is(err, io.EOF), fmt.Errorf("%w: %v", errBroken, err)
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		return response{}, true, fmt.Errorf("bad answer from the local agent: %w", err)
	}
	ok = true
	b.noteAgent(resp)
	return resp, true, nil
}

// takeIdle returns the most recently used kept connection, if any.
func (b *Backend) takeIdle() *agentConn {
	b.connMu.Lock()
	defer b.connMu.Unlock()
	n := len(b.idle)
	if n == 0 {
		return nil
	}
	ac := b.idle[n-1]
	b.idle = b.idle[:n-1]
	return ac
}

func (b *Backend) putIdle(ac *agentConn) {
	ac.used = time.Now()
	b.connMu.Lock()
	defer b.connMu.Unlock()
	if len(b.idle) >= maxIdleConns {
		ac.c.Close()
		return
	}
	b.idle = append(b.idle, ac)
	if !b.reaping {
		b.reaping = true
		time.AfterFunc(b.keepIdle, b.reapIdle)
	}
}

// reapIdle closes the connections unused for keepIdle.
func (b *Backend) reapIdle() {
	b.connMu.Lock()
	defer b.connMu.Unlock()
	cut := time.Now().Add(-b.keepIdle)
	n := 0
	for _, ac := range b.idle { // oldest first
		if ac.used.After(cut) {
			break
		}
		ac.c.Close()
		n++
	}
	b.idle = append(b.idle[:0], b.idle[n:]...)
	if len(b.idle) == 0 {
		b.reaping = false
		return
	}
	time.AfterFunc(b.idle[0].used.Sub(cut), b.reapIdle)
}

// dropIdle closes every kept connection.
func (b *Backend) dropIdle() {
	b.connMu.Lock()
	defer b.connMu.Unlock()
	for _, ac := range b.idle {
		ac.c.Close()
	}
	b.idle = b.idle[:0]
}

// sweep kills what a dead agent left (processes that escaped its
// Pdeathsig), when no agent runs: the agent's lock is free.
func (b *Backend) sweep() {
	if _, err := os.Stat(b.paths.clean); err == nil {
		return // the last agent left nothing
	}
	f, err := os.OpenFile(b.paths.lock, os.O_RDWR, 0)
	if err != nil {
		return
	}
	defer f.Close()
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return // an agent runs (or starts): it sweeps itself
	}
	killMarked(syscall.SIGKILL, envAgentMark+"="+b.paths.sock)
	// Swept: the next agent need not scan again, but learns that the last
	// one died.
	_ = os.WriteFile(b.paths.clean, []byte(sweptNote), 0o600)
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}

// ensureAgent starts the pool's agent unless one answers. The start lock
// keeps two processes from starting two.
func (b *Backend) ensureAgent(ctx context.Context) error {
	b.startMu.Lock()
	defer b.startMu.Unlock()
	if _, err := b.roundTrip(ctx, request{Op: "ping"}); err == nil || !(isNoAgent(err) || isBroken(err)) {
		return err
	}
	f, err := os.OpenFile(b.paths.start, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("local backend: %w", err)
	}
	defer f.Close()
	deadline := time.Now().Add(time.Minute)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := flockWait(f, syscall.LOCK_EX, deadline); err != nil {
		return fmt.Errorf("local backend: lock %s: %w", b.paths.start, err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	if _, err := b.roundTrip(ctx, request{Op: "ping"}); err == nil || !(isNoAgent(err) || isBroken(err)) {
		return err // nil: another process started it meanwhile
	}
	return b.startAgent(ctx)
}

// startAgent starts the agent detached and waits for it to say it is ready.
func (b *Backend) startAgent(ctx context.Context) error {
	slack, _ := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0) // every thread has the process's
	spec, err := json.Marshal(agentSpec{Exe: b.opts.Exe, StateDir: b.opts.StateDir, Pool: b.opts.Pool,
		Idle: b.opts.IdleExit, LogTotal: 64 * b.opts.LogMax, Slack: int64(slack)})
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	logf, err := os.OpenFile(b.paths.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		w.Close()
		return fmt.Errorf("local backend: %w", err)
	}
	// sh starts the agent in the background and exits at once: the agent is
	// re-parented away from us (we have no child to reap, and may exit or be
	// killed without taking it along), for the price of one small exec.
	launcher := exec.Command("/bin/sh", append([]string{"-c", `"$0" "$@" &`, b.opts.Exe}, childArgs(roleAgent, b.opts.Pool)...)...)
	// A race-enabled binary (go test -race) sleeps 1s at exit by default.
	launcher.Env = append(cleanEnv(), envRole+"="+roleAgent, envAgent+"="+string(spec),
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	launcher.Stdout, launcher.Stderr = logf, logf
	launcher.Dir = b.opts.StateDir // not the caller's directory, which may go away
	launcher.ExtraFiles = []*os.File{w}
	err = startWithSlack(launcher, agentTimerSlack)
	if err == nil {
		err = launcher.Wait()
	}
	w.Close()
	logf.Close()
	if err != nil {
		return fmt.Errorf("local backend: start the agent (does the binary call local.MaybeRunChild first thing?): %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = r.SetReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = r.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	line, err := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	switch {
	case strings.HasPrefix(line, "ok"):
		return nil
	case strings.HasPrefix(line, "error "):
		return fmt.Errorf("local backend: the agent did not start: %s (see %s)", strings.TrimPrefix(line, "error "), b.paths.log)
	case ctx.Err() != nil:
		return ctx.Err()
	default:
		return fmt.Errorf("local backend: the agent exited before it was ready (%v; does the binary call local.MaybeRunChild first thing?); see %s", err, b.paths.log)
	}
}

// agentTimerSlack is the agent's timer slack (PR_SET_TIMERSLACK; Linux's
// default is 50 µs). The agent's timers (expiry, idle, warmup) need no
// precision finer than a millisecond, and its work comes from sockets,
// whose wake-ups slack does not delay; what slack lets the kernel
// coalesce are the Go runtime's short sleeps while the agent is busy
// (sysmon's 20 µs polls, a thief's 3 µs nap before stealing a goroutine):
// each one a pair of context switches, a share of the agent's CPU per
// created sandbox (issue 9).
const agentTimerSlack = time.Millisecond

// startWithSlack starts cmd with the given timer slack, which a process
// inherits from the thread that forks it and passes on to every thread
// (and process) it starts: the agent's own runtime threads, sysmon
// included, exist before its main could set it.
func startWithSlack(cmd *exec.Cmd, slack time.Duration) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	old, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil || unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(slack.Nanoseconds()), 0, 0, 0) != nil {
		return cmd.Start() // not Linux-like: started as it is
	}
	defer unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(old), 0, 0, 0)
	return cmd.Start()
}

var idRE = regexp.MustCompile(`^sb-[0-9a-f]{12}$`)

// validID also keeps ids from the outside (API, CLI) from naming other paths.
func validID(id string) bool { return idRE.MatchString(id) }

// idKey is an id's 48 bits, its key in the claim table; ok is validID(id),
// without a regexp on the claim path.
func idKey(id string) (key uint64, ok bool) {
	if len(id) != 15 || id[:3] != "sb-" {
		return 0, false
	}
	for i := 3; i < len(id); i++ {
		switch c := id[i]; {
		case '0' <= c && c <= '9':
			key = key<<4 | uint64(c-'0')
		case 'a' <= c && c <= 'f':
			key = key<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return key, true
}

func newID() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "sb-" + hex.EncodeToString(b[:]), nil
}
