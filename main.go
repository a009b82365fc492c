// Command sandboxpool keeps a pool of warm sandboxes healthy and ready, shows
// it live in a terminal dashboard, and hands sandboxes out from the keyboard,
// an HTTP API or the command line. main only wires flags to the packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sandboxpool/sandboxpool/internal/cpuprof"
	"github.com/sandboxpool/sandboxpool/pool/local"
)

// Exit codes (SPEC): 0 done, 1 runtime failure, 2 bad usage.
const (
	exitFailure = 1
	exitUsage   = 2
)

// usageError marks a bad flag or value: exit 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func main() {
	// The local agent is this binary re-executed: it never reaches the
	// command line (nor cobra).
	cpuprof.FromEnv()
	local.MaybeRunChild()
	if len(os.Args) > 1 && os.Args[1] == "run" {
		withTimerSlack(controllerTimerSlack) // the controller, long-lived: see slack_linux.go
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := newRootCommand()
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "sandboxpool:", oneLine(err.Error()))
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		return exitUsage
	}
	return exitFailure
}
