// Package cpuprof is a hidden profiling hook for measuring the shipped
// binary: with SANDBOXPOOL_DEBUG_CPUPROFILE=PREFIX in the environment, a
// process (the controller or the local agent, which inherits it) starts a
// CPU profile on SIGUSR1 and writes it to PREFIX.<pid> on SIGUSR2. Without
// the variable it does nothing (and SIGUSR1 keeps its default action).
package cpuprof

import (
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
)

// Env names the variable that turns the hook on.
const Env = "SANDBOXPOOL_DEBUG_CPUPROFILE"

// FromEnv installs the hook when Env is set.
func FromEnv() {
	prefix := os.Getenv(Env)
	if prefix == "" {
		return
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		var f *os.File
		for s := range sigs {
			switch {
			case s == syscall.SIGUSR1 && f == nil:
				var err error
				if f, err = os.Create(fmt.Sprintf("%s.%d", prefix, os.Getpid())); err != nil {
					f = nil
					continue
				}
				// Finer than the default 100 Hz: a phase lasts a fraction of a second.
				runtime.SetCPUProfileRate(2000)
				if pprof.StartCPUProfile(f) != nil {
					f.Close()
					f = nil
				}
			case s == syscall.SIGUSR2 && f != nil:
				pprof.StopCPUProfile()
				f.Close()
				f = nil
			}
		}
	}()
}
