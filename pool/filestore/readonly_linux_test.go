package filestore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sandboxpool/sandboxpool/pool"
)

// A read-only state dir (a read-only bind mount: tests run as root, where
// permissions do not stop writes): reads work, every write fails at once
// with the OS error naming the path. (A descriptor opened before the bind
// mount still writes through the mount below: only new opens are tested.)
func TestReadOnlyStateDir(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	w := open(t, dir)
	if err := w.Put(ctx, ref("a", 100)); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("bind mount (needs root): %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		t.Skipf("read-only remount: %v", err)
	}
	before := readFile(t, w.Path())
	for name, s := range map[string]*Store{"new": open(t, dir), "empty dir": open(t, empty)} {
		want := "a"
		if s.dir == empty {
			want = ""
		}
		if got := desc(load(t, s).Entries); got != want {
			t.Fatalf("%s: Load %q", name, got)
		}
		for op, write := range map[string]func() error{
			"Put": func() error { return s.Put(ctx, ref("b", 100)) },
			"Take": func() error {
				_, _, _, err := s.Take(ctx, pool.TakeRequest{MinExpiresAt: t0, ClaimedBy: "me", Now: t0})
				return err
			},
			"SetTarget": func() error { return s.SetTarget(ctx, 9) },
		} {
			start := time.Now()
			err := write()
			if err == nil || !strings.Contains(err.Error(), s.base) || !strings.Contains(err.Error(), "read-only file system") {
				t.Fatalf("%s %s: %v: want the OS error naming a file of %s", name, op, err, s.base)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("%s %s took %v", name, op, d)
			}
		}
	}
	if got := readFile(t, w.Path()); !bytes.Equal(got, before) {
		t.Fatalf("the file changed: %s", got)
	}
}
