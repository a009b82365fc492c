package local

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The re-executed binary learns its role from the environment rather than from
// a subcommand, so the same mechanism works for the sandboxpool binary and for
// Go test binaries (whose TestMain calls MaybeRunChild).
const (
	envRole = "SANDBOXPOOL_LOCAL_CHILD" // roleLaunch, roleSupervise or roleServe
	envSpec = "SANDBOXPOOL_LOCAL_SPEC"  // the spec, JSON
	envID   = "SANDBOXPOOL_LOCAL_ID"    // marker carried by every process of a sandbox

	roleLaunch    = "launch"    // starts the supervisor detached, then exits
	roleSupervise = "supervise" // runs the workload, kills the group at expiry
	roleServe     = "serve"     // the built-in directory-listing HTTP server
)

// Inherited descriptors: the launcher and supervisor get the handshake pipe
// as fd 3 and the reserved socket as fd 4; the built-in server gets the
// socket as fd 3.
const (
	fdHandshake = 3
	fdSocket    = 4
	fdServe     = 3
)

// spec is everything a child needs to know, passed in envSpec.
type spec struct {
	ID        string        `json:"id"`
	Pool      string        `json:"pool"`
	Dir       string        `json:"dir"` // the pool's sandbox directory
	Exe       string        `json:"exe"`
	Port      int           `json:"port"`
	Cmd       string        `json:"cmd,omitempty"`
	Warmup    time.Duration `json:"warmup"`
	Grace     time.Duration `json:"grace"`
	CreatedAt time.Time     `json:"created_at"`
	ExpiresAt time.Time     `json:"expires_at"`
}

func (s spec) url() string { return "http://127.0.0.1:" + strconv.Itoa(s.Port) }

// MaybeRunChild runs this process as a local-backend child (launcher,
// supervisor or built-in server) and exits when the environment says it is
// one; otherwise it returns at once. Call it first thing in main and in the
// TestMain of every package whose tests create local sandboxes, before flags
// are parsed or anything else starts.
func MaybeRunChild() {
	role := os.Getenv(envRole)
	if role == "" {
		return
	}
	var sp spec
	err := json.Unmarshal([]byte(os.Getenv(envSpec)), &sp)
	// One *os.File for the handshake pipe, kept reachable until the error
	// report below (a second one would close fd 3 when garbage collected).
	var hs *os.File
	if role == roleLaunch || role == roleSupervise {
		hs = os.NewFile(fdHandshake, "handshake")
		// Inherited descriptors are not close-on-exec; workloads must not hold it.
		syscall.CloseOnExec(fdHandshake)
	}
	if err == nil {
		switch role {
		case roleLaunch:
			err = launch(sp, hs)
		case roleSupervise:
			err = supervise(sp, hs) // returns only on a failure before the handshake
		case roleServe:
			err = serve(sp)
		default:
			err = fmt.Errorf("unknown role %q", role)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sandboxpool local %s %s: %v\n", role, sp.ID, err)
		if hs != nil {
			// Tell Create why, rather than a bare "exited".
			fmt.Fprintf(hs, "error %s: %v\n", role, err)
		}
		os.Exit(1)
	}
	os.Exit(0)
}

// launch starts the supervisor in its own session and returns without waiting:
// the supervisor is then re-parented to init, so it survives the controller
// (even kill -9) and the controller has no child to reap.
func launch(sp spec, hs *os.File) error {
	cmd := childCmd(sp, roleSupervise)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr // the sandbox log
	cmd.ExtraFiles = []*os.File{hs}
	if sp.Cmd == "" {
		cmd.ExtraFiles = append(cmd.ExtraFiles, os.NewFile(fdSocket, "socket"))
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

// supervise records the sandbox, starts its workload in its own process group
// (it leads the group since launch made it a session leader), reports to
// Create, then tears the group down at expiry, on SIGTERM, or when the
// workload exits. After the handshake it never returns.
func supervise(sp spec, hs *os.File) error {
	// Pdeathsig fires when the thread that forked the workload exits, so fork
	// from a thread that lives as long as the process.
	runtime.LockOSThread()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)

	pid := os.Getpid()
	fail := func(err error) error { // only before the workload started
		removeSandboxFiles(sp.Dir, sp.ID)
		return err
	}
	rec := record{ID: sp.ID, Pool: sp.Pool, URL: sp.url(), Pid: pid, Pgid: syscall.Getpgrp(), CreatedAt: sp.CreatedAt, ExpiresAt: sp.ExpiresAt}
	if rec.Pgid != pid {
		return fail(fmt.Errorf("not a process group leader (pgid %d)", rec.Pgid))
	}
	if err := writeRecord(sp.Dir, rec); err != nil {
		return fail(err)
	}
	work := filepath.Join(sp.Dir, sp.ID)
	if err := os.MkdirAll(work, 0o755); err != nil {
		return fail(err)
	}
	readme := fmt.Sprintf("sandboxpool local sandbox %s\npool: %s\ncreated: %s\nexpires: %s\n",
		sp.ID, sp.Pool, sp.CreatedAt.Format(time.RFC3339), sp.ExpiresAt.Format(time.RFC3339))
	if err := os.WriteFile(filepath.Join(work, "README.txt"), []byte(readme), 0o644); err != nil {
		return fail(err)
	}

	var cmd *exec.Cmd
	var sock *os.File
	if sp.Cmd == "" {
		syscall.CloseOnExec(fdSocket)
		sock = os.NewFile(fdSocket, "socket")
		cmd = childCmd(sp, roleServe)
		cmd.ExtraFiles = []*os.File{sock}
	} else {
		port := strconv.Itoa(sp.Port)
		cmd = exec.Command("/bin/sh", "-c", strings.ReplaceAll(sp.Cmd, "{port}", port))
		cmd.Env = append(cleanEnv(), envID+"="+sp.ID, "PORT="+port)
	}
	cmd.Dir = work
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	// If the supervisor itself is killed with -9, the workload dies with it
	// instead of outliving its expiry unsupervised.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err := cmd.Start()
	if sock != nil {
		sock.Close() // the server has its own copy
	}
	if err != nil {
		return fail(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()

	// A failed write means Create gave up on us (it closed its end): leave.
	_, err = hs.WriteString("ok\n")
	hs.Close()
	why := "controller gave up"
	if err == nil {
		timer := time.NewTimer(time.Until(sp.ExpiresAt))
		select {
		case <-timer.C:
			why = "expired"
		case s := <-sigs:
			why = "got " + s.String()
		case <-done:
			why = "workload exited: " + cmd.ProcessState.String()
		}
	}
	fmt.Fprintf(os.Stderr, "sandboxpool local supervise %s: %s, stopping\n", sp.ID, why)
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(sp.Grace):
	}
	removeSandboxFiles(sp.Dir, sp.ID)
	// Stragglers (children the workload left behind) and ourselves.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	os.Exit(0)
	return nil
}

// serve is the built-in workload: a directory listing of the sandbox's working
// directory, like python -m http.server. Until it listens (after Warmup),
// connections to the reserved port are refused.
func serve(sp spec) error {
	time.Sleep(sp.Warmup) // the point of Warmup: a sandbox that boots slowly
	if err := syscall.Listen(fdServe, syscall.SOMAXCONN); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	f := os.NewFile(fdServe, "socket")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return err
	}
	dir, err := os.Getwd()
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(dir)), ReadHeaderTimeout: 10 * time.Second}
	return srv.Serve(ln)
}

// writeRecord writes <id>.json atomically (temp file then rename) so readers
// never see half a record. No fsync: a record only matters while its
// processes live, and they do not survive a machine crash either.
func writeRecord(dir string, rec record) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+rec.ID+".*.tmp")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, rec.ID+".json"))
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
}
