// Package local is the default sandboxpool backend: each sandbox is a real OS
// process group on this machine, started detached under a small supervisor
// (this binary re-executed) that kills it at expiry even when the controller
// that created it is gone.
//
// Layout under <StateDir>/<pool>.sandboxes/:
//
//	<id>.json  the record, written by the supervisor itself (temp+rename)
//	<id>.log   stdout/stderr of the supervisor and its workload
//	<id>/      the workload's working directory (served by the built-in server)
//
// Every process of a sandbox carries SANDBOXPOOL_LOCAL_ID=<id> in its
// environment; that marker is how a pid read from a record is told apart from
// an unrelated process that reused the number.
package local

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

// Options configure a Backend.
type Options struct {
	// Pool names the pool; its sandboxes live in <StateDir>/<Pool>.sandboxes.
	Pool     string
	StateDir string
	// Cmd, when set, is run via /bin/sh -c instead of the built-in server,
	// with {port} replaced and PORT set.
	Cmd string
	// Warmup is how long the built-in server waits before it listens.
	Warmup time.Duration
	// Exe is the binary re-executed as supervisor; default os.Executable().
	// It must call MaybeRunChild first thing.
	Exe string
	// TermGrace is how long Terminate waits after SIGTERM before SIGKILL; default 1s.
	TermGrace time.Duration
}

// Backend runs sandboxes as local processes. It keeps no state in memory
// (everything is in the record files), so it is safe for concurrent use and
// several Backends, in one process or many, can share a pool.
type Backend struct {
	opts Options
	dir  string
}

var _ pool.Backend = (*Backend)(nil)

// New checks the options and creates the pool's sandbox directory.
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
	var err error
	if opts.Exe == "" {
		if opts.Exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("local backend: find own binary: %w", err)
		}
	}
	// Children run in other working directories: keep paths absolute.
	if opts.Exe, err = filepath.Abs(opts.Exe); err != nil {
		return nil, err
	}
	if opts.StateDir, err = filepath.Abs(opts.StateDir); err != nil {
		return nil, err
	}
	if opts.TermGrace <= 0 {
		opts.TermGrace = time.Second
	}
	dir := filepath.Join(opts.StateDir, opts.Pool+".sandboxes")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("local backend: %w", err)
	}
	return &Backend{opts: opts, dir: dir}, nil
}

// Name is "local".
func (b *Backend) Name() string { return "local" }

// record is what <id>.json holds.
type record struct {
	ID        string    `json:"id"`
	Pool      string    `json:"pool"`
	URL       string    `json:"url"`
	Pid       int       `json:"pid"`  // the supervisor
	Pgid      int       `json:"pgid"` // its process group: the whole sandbox
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (r record) ref() pool.Ref {
	return pool.Ref{ID: r.ID, URL: r.URL, CreatedAt: r.CreatedAt, ExpiresAt: r.ExpiresAt}
}

// handshakeTimeout bounds how long Create waits for a supervisor to report,
// so a wedged child can never hang the engine.
const handshakeTimeout = 30 * time.Second

// Create starts a supervisor for a new sandbox and returns as soon as the
// supervisor has recorded it and started its workload (not waiting for health).
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
	// The port is reserved by a bound, not yet listening socket handed down to
	// the built-in server: no other creation can pick it, and until the server
	// listens (after Warmup) connections are refused, as for a booting sandbox.
	// A --cmd binds the port itself, so for it the socket only picks the port
	// and is closed before the command starts (any copy still open would make
	// its bind fail).
	sock, port, err := bindLoopback()
	if err != nil {
		return pool.Ref{}, fmt.Errorf("local backend: reserve a port: %w", err)
	}
	defer sock.Close()
	if b.opts.Cmd == "" && b.opts.Warmup == 0 {
		// With no warmup the socket listens at once: the first health check
		// then waits in the backlog for the server instead of being refused
		// and retried 100 ms later.
		if err := syscall.Listen(int(sock.Fd()), syscall.SOMAXCONN); err != nil {
			return pool.Ref{}, fmt.Errorf("local backend: listen: %w", err)
		}
	}
	extra := []*os.File{nil, sock}
	if b.opts.Cmd != "" {
		sock.Close()
		extra = extra[:1]
	}
	// UTC without a monotonic reading: the Ref returned here then equals the
	// one List rebuilds from the JSON record.
	now := time.Now().UTC().Round(0)
	sp := spec{
		ID: id, Pool: b.opts.Pool, Dir: b.dir, Exe: b.opts.Exe, Port: port,
		Cmd: b.opts.Cmd, Warmup: b.opts.Warmup, Grace: b.opts.TermGrace,
		CreatedAt: now, ExpiresAt: now.Add(ttl),
	}
	ref := pool.Ref{ID: id, URL: sp.url(), CreatedAt: sp.CreatedAt, ExpiresAt: sp.ExpiresAt}

	// The supervisor reports "ok" or "error ..." on this pipe once it has
	// written its record and started the workload.
	hr, hw, err := os.Pipe()
	if err != nil {
		return pool.Ref{}, err
	}
	defer hr.Close()
	logf, err := os.OpenFile(b.path(id, ".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		hw.Close()
		return pool.Ref{}, fmt.Errorf("local backend: %w", err)
	}
	// The launcher starts the supervisor in a new session and exits at once, so
	// the supervisor is re-parented to init: it outlives this process and we
	// need no goroutine to reap it.
	launcher := childCmd(sp, roleLaunch)
	launcher.Stdout, launcher.Stderr = logf, logf
	// A race-enabled binary (go test -race) sleeps 1s at exit by default, and
	// Create waits for the launcher's exit. No effect on normal builds.
	launcher.Env = append(launcher.Env, "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	extra[0] = hw
	launcher.ExtraFiles = extra
	err = launcher.Run()
	hw.Close()
	logf.Close()
	sock.Close()
	if err != nil {
		b.removeFiles(id)
		return pool.Ref{}, fmt.Errorf("local backend: start supervisor (does the binary call local.MaybeRunChild first thing?): %w", err)
	}
	if err := handshake(ctx, hr); err != nil {
		// Closing our end first makes a late "ok" fail in the supervisor, which
		// then tears itself down; Terminate covers one that already reported.
		hr.Close()
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.opts.TermGrace+5*time.Second)
		defer cancel()
		_ = b.Terminate(tctx, id)
		return pool.Ref{}, fmt.Errorf("local backend: sandbox %s: %w", id, err)
	}
	return ref, nil
}

// handshake reads the supervisor's one-line report, honouring ctx.
func handshake(ctx context.Context, r *os.File) error {
	deadline := time.Now().Add(handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := r.SetReadDeadline(deadline); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = r.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	line, err := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	switch {
	case line == "ok":
		return nil
	case strings.HasPrefix(line, "error "):
		return errors.New(strings.TrimPrefix(line, "error "))
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errors.New("supervisor did not report in time")
	default:
		return fmt.Errorf("supervisor exited before reporting (%v); does the binary call local.MaybeRunChild first thing?", err)
	}
}

// Terminate stops a sandbox: SIGTERM to its process group, SIGKILL after
// TermGrace. It works from the record alone, so it also stops sandboxes that
// another process created. Unknown or dead ids are not an error.
func (b *Backend) Terminate(ctx context.Context, id string) error {
	if !validID(id) {
		return nil
	}
	defer b.removeFiles(id)
	rec, err := b.readRecord(id)
	if err != nil {
		return nil // no record: nothing we could still find to stop
	}
	b.signal(rec, syscall.SIGTERM)
	t := time.NewTimer(b.opts.TermGrace)
	defer t.Stop()
	if !b.waitGone(rec, t.C, ctx.Done()) {
		b.signal(rec, syscall.SIGKILL)
		// SIGKILL is not catchable; wait briefly so callers see it gone.
		kt := time.NewTimer(time.Second)
		defer kt.Stop()
		b.waitGone(rec, kt.C, nil)
	}
	return nil
}

// waitGone polls until no live process of the sandbox remains (true), or the
// timer fires or done closes (false).
func (b *Backend) waitGone(rec record, timer <-chan time.Time, done <-chan struct{}) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if len(groupPids(rec.Pgid, rec.ID)) == 0 {
			return true
		}
		select {
		case <-timer:
			return false
		case <-done:
			return false
		case <-tick.C:
		}
	}
}

// signal sends sig to the sandbox: to the whole group while its supervisor is
// verifiably ours (that reaches children that dropped the marker too), and
// otherwise only to processes that still carry the marker, since a group id
// without a live leader can be reused by unrelated processes.
func (b *Backend) signal(rec record, sig syscall.Signal) {
	if supervisorAlive(rec) {
		_ = syscall.Kill(-rec.Pgid, sig)
		return
	}
	for _, pid := range groupPids(rec.Pgid, rec.ID) {
		_ = syscall.Kill(pid, sig)
	}
}

// List returns this pool's sandboxes whose supervisor is alive, oldest first.
// Records of dead sandboxes are removed and their leftover processes killed.
func (b *Backend) List(ctx context.Context) ([]pool.Ref, error) {
	entries, err := os.ReadDir(b.dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("local backend: %w", err)
	}
	recorded := map[string]bool{}
	var refs []pool.Ref
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !validID(id) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		recorded[id] = true
		rec, err := b.readRecord(id)
		switch {
		case err != nil:
			// Records are renamed into place whole, so this one is garbage.
			b.removeFiles(id)
		case supervisorAlive(rec):
			refs = append(refs, rec.ref())
		default:
			b.signal(rec, syscall.SIGKILL)
			b.removeFiles(id)
		}
	}
	b.sweep(entries, recorded)
	slices.SortFunc(refs, func(x, y pool.Ref) int { return x.CreatedAt.Compare(y.CreatedAt) })
	return refs, nil
}

// sweep removes per-sandbox files (log, directory, temp record) left without
// a record by a creation that died half-way. The age guard leaves creations in
// flight alone.
func (b *Backend) sweep(entries []os.DirEntry, recorded map[string]bool) {
	const idLen = len("sb-") + 12
	for _, e := range entries {
		id := strings.TrimPrefix(e.Name(), ".")
		if len(id) < idLen || !validID(id[:idLen]) || recorded[id[:idLen]] {
			continue
		}
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > time.Minute {
			_ = os.RemoveAll(filepath.Join(b.dir, e.Name()))
		}
	}
}

// Pids returns the live processes of a sandbox (supervisor and workload,
// and whatever they started that kept the marker); empty when it is gone.
func (b *Backend) Pids(id string) ([]int, error) {
	rec, err := b.readRecord(id)
	if err != nil {
		return nil, err
	}
	return groupPids(rec.Pgid, rec.ID), nil
}

// Pgid returns the process group of a sandbox, as recorded.
func (b *Backend) Pgid(id string) (int, error) {
	rec, err := b.readRecord(id)
	if err != nil {
		return 0, err
	}
	return rec.Pgid, nil
}

// Dir is the directory holding this pool's sandbox records.
func (b *Backend) Dir() string { return b.dir }

func (b *Backend) path(id, suffix string) string { return filepath.Join(b.dir, id+suffix) }

func (b *Backend) readRecord(id string) (record, error) {
	if !validID(id) {
		return record{}, fmt.Errorf("local backend: bad sandbox id %q", id)
	}
	data, err := os.ReadFile(b.path(id, ".json"))
	if err != nil {
		return record{}, err
	}
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil {
		return record{}, err
	}
	if rec.ID != id || rec.Pid <= 1 || rec.Pgid <= 1 {
		return record{}, fmt.Errorf("local backend: bad record %s", id)
	}
	return rec, nil
}

func (b *Backend) removeFiles(id string) { removeSandboxFiles(b.dir, id) }

func removeSandboxFiles(dir, id string) {
	_ = os.Remove(filepath.Join(dir, id+".json"))
	_ = os.Remove(filepath.Join(dir, id+".log"))
	_ = os.RemoveAll(filepath.Join(dir, id))
}

var idRE = regexp.MustCompile(`^sb-[0-9a-f]{12}$`)

// validID also keeps ids from the outside (API, CLI) from naming other paths.
func validID(id string) bool { return idRE.MatchString(id) }

func newID() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "sb-" + hex.EncodeToString(b[:]), nil
}

// childCmd builds the re-execution of this binary in a role. The role and id
// are in argv only so that ps shows what a process is. -test.run=^$ is a fuse:
// a test binary whose TestMain forgot MaybeRunChild runs no tests (instead of
// recursively creating sandboxes), and the real binary rejects the flag.
func childCmd(sp spec, role string) *exec.Cmd {
	data, _ := json.Marshal(sp)
	cmd := exec.Command(sp.Exe, "-test.run=^$", "sandboxpool-local-"+role, sp.ID)
	cmd.Env = append(cleanEnv(), envRole+"="+role, envSpec+"="+string(data), envID+"="+sp.ID)
	return cmd
}

// cleanEnv is our environment without this package's variables, so that a
// workload never inherits a role.
func cleanEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, envRole+"=") || strings.HasPrefix(kv, envSpec+"=") || strings.HasPrefix(kv, envID+"=")
	})
}

// bindLoopback returns a TCP socket bound to a free port on 127.0.0.1 but not
// listening, and the port.
func bindLoopback() (*os.File, int, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, 0, err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		return nil, 0, err
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		return nil, 0, err
	}
	return os.NewFile(uintptr(fd), "listener"), sa.(*syscall.SockaddrInet4).Port, nil
}
