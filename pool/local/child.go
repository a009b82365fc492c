package local

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// The agent is this binary re-executed. It learns its role from the
// environment rather than from a subcommand, so the same dispatch works for
// the sandboxpool binary and for Go test binaries (whose TestMain calls
// MaybeRunChild).
const (
	envRole  = "SANDBOXPOOL_LOCAL_ROLE"  // roleAgent
	envAgent = "SANDBOXPOOL_LOCAL_AGENT" // the agentSpec, JSON

	roleAgent = "agent"

	// Every process of a --cmd sandbox carries these: the marks by which
	// its escapees are found, and what a workload may want to know.
	envSandbox   = "SANDBOXPOOL_SANDBOX"            // the sandbox id
	envAgentMark = "SANDBOXPOOL_AGENT_SOCKET"       // the agent's socket: which pool
	envCreatedAt = "SANDBOXPOOL_SANDBOX_CREATED_AT" // RFC 3339
	envExpiresAt = "SANDBOXPOOL_SANDBOX_EXPIRES_AT" // RFC 3339: the agent kills it then
)

// fdReady is the pipe on which the agent says it is ready ("ok PID") or why
// not ("error ...").
const fdReady = 3

// MaybeRunChild runs this process as the local agent and
// exits when the environment says it is one; otherwise it returns at once.
// Call it first thing in main and in the TestMain of every package whose
// tests create local sandboxes, before flags are parsed.
func MaybeRunChild() {
	role := os.Getenv(envRole)
	if role == "" {
		return
	}
	ready := os.NewFile(fdReady, "ready")
	syscall.CloseOnExec(fdReady) // workloads must not hold it
	var spec agentSpec
	err := json.Unmarshal([]byte(os.Getenv(envAgent)), &spec)
	if err == nil {
		switch role {
		case roleAgent:
			// Its own session: no terminal's signals reach it.
			_, _ = syscall.Setsid()
			os.Unsetenv(envRole)
			os.Unsetenv(envAgent)
			err = runAgent(spec, ready)
		default:
			err = fmt.Errorf("unknown role %q", role)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sandboxpool local %s: %v\n", role, err)
		fmt.Fprintf(ready, "error %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// childArgs is argv[1:] of a re-execution. The role is there only so that
// ps shows what a process is. In a test binary, -test.run=^$ is a fuse: one
// whose TestMain forgot MaybeRunChild runs no tests instead of recursing.
// A production binary never gets it.
func childArgs(role, pool string) []string {
	args := []string{"sandboxpool-local-" + role, pool}
	if testing.Testing() {
		args = append([]string{"-test.run=^$"}, args...)
	}
	return args
}

// cleanEnv is our environment without this package's variables.
func cleanEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return k == envRole || k == envAgent
	})
}
