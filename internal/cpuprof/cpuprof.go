// Package cpuprof is a hidden profiling hook for measuring the shipped
// binary: with SANDBOXPOOL_DEBUG_CPUPROFILE=PREFIX in the environment, a
// process (the controller or the local agent, which inherits it) starts a
// CPU profile on SIGUSR1 and writes it to PREFIX.<pid> on SIGUSR2. It also
// writes the allocations so far at each signal (PREFIX.<pid>.allocs0 and
// .allocs1, sampled finely: compare them with `go tool pprof -base`), which
// is what costs GC cycles and page faults. With
// SANDBOXPOOL_DEBUG_HEAPPROFILE=PREFIX instead, each SIGUSR1 writes a heap
// profile (after a GC) to PREFIX.<pid>.<n>: two taken apart in a soak show
// what memory only grows. Without the variables it does nothing (and
// SIGUSR1 keeps its default action). With SANDBOXPOOL_DEBUG_TRACE=PREFIX, a
// SIGUSR1 starts an execution trace and a SIGUSR2 writes it to
// PREFIX.<pid>.trace: where goroutines waited, not only what ran
// (`go tool trace`).
package cpuprof

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"syscall"
)

// Env names the variable that turns the CPU hook on, HeapEnv the heap one.
const (
	Env      = "SANDBOXPOOL_DEBUG_CPUPROFILE"
	HeapEnv  = "SANDBOXPOOL_DEBUG_HEAPPROFILE"
	TraceEnv = "SANDBOXPOOL_DEBUG_TRACE"
)

// FromEnv installs the hook when Env, TraceEnv or HeapEnv is set (in that order).
func FromEnv() {
	if prefix := os.Getenv(Env); prefix != "" {
		// Every 4 KiB rather than 512 KiB: a phase allocates a few MiB.
		runtime.MemProfileRate = 4096
		onSignals(fmt.Sprintf("%s.%d", prefix, os.Getpid()), func(f io.Writer) error {
			writeAllocs(fmt.Sprintf("%s.%d.allocs0", prefix, os.Getpid()))
			// Finer than the default 100 Hz: a phase lasts a fraction of a second.
			runtime.SetCPUProfileRate(2000)
			return pprof.StartCPUProfile(f)
		}, func() {
			pprof.StopCPUProfile()
			writeAllocs(fmt.Sprintf("%s.%d.allocs1", prefix, os.Getpid()))
		})
		return
	}
	if prefix := os.Getenv(TraceEnv); prefix != "" {
		onSignals(fmt.Sprintf("%s.%d.trace", prefix, os.Getpid()), trace.Start, trace.Stop)
		return
	}
	heapFromEnv()
}

// onSignals runs start on a new file at path on SIGUSR1 and stop on
// SIGUSR2, which closes the file; then again on the next SIGUSR1.
func onSignals(path string, start func(io.Writer) error, stop func()) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		var f *os.File
		for s := range sigs {
			switch {
			case s == syscall.SIGUSR1 && f == nil:
				var err error
				if f, err = os.Create(path); err != nil {
					f = nil
					continue
				}
				if start(f) != nil {
					f.Close()
					f = nil
				}
			case s == syscall.SIGUSR2 && f != nil:
				stop()
				f.Close()
				f = nil
			}
		}
	}()
}

// writeAllocs runs a GC first: the profile holds what was allocated up to
// the last GC, and a quiet process (the agent) may have had none since.
func writeAllocs(path string) {
	runtime.GC()
	writeProfile("allocs", path)
}

func writeProfile(name, path string) {
	f, err := os.Create(path)
	if err != nil {
		return
	}
	defer f.Close()
	_ = pprof.Lookup(name).WriteTo(f, 0)
}

// heapFromEnv writes a heap profile on each SIGUSR1 when HeapEnv is set.
func heapFromEnv() {
	prefix := os.Getenv(HeapEnv)
	if prefix == "" {
		return
	}
	// Every 4 KiB rather than 512 KiB: a controller's live heap is a few
	// MiB, which the default rate samples a handful of times.
	runtime.MemProfileRate = 4096
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1)
	go func() {
		for n := 1; ; n++ {
			<-sigs
			runtime.GC() // in-use figures as of now, not as of the last GC
			writeProfile("heap", fmt.Sprintf("%s.%d.%d", prefix, os.Getpid(), n))
		}
	}()
}
