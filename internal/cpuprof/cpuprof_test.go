package cpuprof

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/internal/testkit"
)

// With HeapEnv set, SIGUSR1 writes a heap profile (gzipped protobuf) to
// PREFIX.<pid>.<n>, one more file per signal.
func TestHeapProfileOnSignal(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "heap")
	t.Setenv(Env, "")
	t.Setenv(HeapEnv, prefix)
	FromEnv()
	for n := 1; n <= 2; n++ {
		if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		path := fmt.Sprintf("%s.%d.%d", prefix, os.Getpid(), n)
		var data []byte
		testkit.Eventually(t, 10*time.Second, path, func() bool {
			data, _ = os.ReadFile(path)
			return bytes.HasPrefix(data, []byte{0x1f, 0x8b}) && len(data) > 100
		})
	}
}

func TestTraceBetweenSignals(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "tr")
	t.Setenv(Env, "")
	t.Setenv(TraceEnv, prefix)
	FromEnv()
	path := fmt.Sprintf("%s.%d.trace", prefix, os.Getpid())
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, path+" started", func() bool {
		_, err := os.Stat(path)
		return err == nil
	})
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, path+" written", func() bool {
		data, _ := os.ReadFile(path)
		return bytes.HasPrefix(data, []byte("go 1.")) && len(data) > 100
	})
}
