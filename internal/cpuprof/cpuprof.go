// Package cpuprof is a hidden profiling hook for measuring the shipped
// binary: with SANDBOXPOOL_DEBUG_CPUPROFILE=PREFIX in the environment, a
// process (the controller or the local agent, which inherits it) starts a
// CPU profile on SIGUSR1 and writes it to PREFIX.<pid> on SIGUSR2. It also
// writes the allocations so far at each signal (PREFIX.<pid>.allocs0 and
// .allocs1, sampled finely: compare them with `go tool pprof -base`), which
// is what costs GC cycles and page faults. Without the variable it does
// nothing (and SIGUSR1 keeps its default action).
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
	// Every 4 KiB rather than 512 KiB: a phase allocates a few MiB.
	runtime.MemProfileRate = 4096
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		var f *os.File
		for s := range sigs {
			switch {
			case s == syscall.SIGUSR1 && f == nil:
				writeAllocs(fmt.Sprintf("%s.%d.allocs0", prefix, os.Getpid()))
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
				writeAllocs(fmt.Sprintf("%s.%d.allocs1", prefix, os.Getpid()))
			}
		}
	}()
}

func writeAllocs(path string) {
	f, err := os.Create(path)
	if err != nil {
		return
	}
	defer f.Close()
	_ = pprof.Lookup("allocs").WriteTo(f, 0)
}
