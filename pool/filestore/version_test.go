package filestore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Version 2 files, as the builds before version 3 wrote them (snapshot and
// log) and as the builds of the round that added the workload and the seq
// without a new version wrote them, are read as they are (a read rewrites
// nothing) and rewritten whole as version 3 by the first change.
func TestVersion2Upgraded(t *testing.T) {
	snapEntry := `{"id":"a","url":"u","created_at":"2030-01-02T03:04:05Z","expires_at":"2030-01-02T03:09:05Z"}`
	put := `{"op":"put","id":"b","url":"u","created_at":"2030-01-02T03:04:05Z","expires_at":"2030-01-02T03:09:05Z"}`
	for _, tc := range []struct{ name, file, workload string }{
		{"before version 3", `{"version":2,"target":2,"ttl":"2m0s","use_duration":"30s","entries":[
` + snapEntry + `
]}
` + put + "\n", ""},
		{"the workload and seq as version 2", `{"version":2,"target":2,"ttl":"2m0s","use_duration":"30s","workload":"w1","seq":7,"entries":[
` + snapEntry + `
]}
` + put + "\n" + `{"op":"workload","workload":"w2"}` + "\n", "w2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, t.TempDir())
			if err := os.WriteFile(s.Path(), []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			if st := load(t, s); desc(st.Entries) != "a b" || st.Target != 2 || st.TTL != 2*time.Minute || st.Workload != tc.workload {
				t.Fatalf("read as %+v", st)
			}
			if got := readFile(t, s.Path()); string(got) != tc.file {
				t.Fatalf("a Load rewrote the file: %s", got)
			}
			if e, ok := take(t, s, "me"); !ok || e.ID != "a" {
				t.Fatalf("took %q %v", e.ID, ok)
			}
			got := readFile(t, s.Path())
			if !bytes.HasPrefix(got, []byte(`{"version":3,`)) {
				t.Fatalf("not rewritten as version 3:\n%s", got)
			}
			if st := load(t, open(t, filepath.Dir(s.Path()))); desc(st.Entries) != "a* b" || st.Workload != tc.workload || st.UseDuration != 30*time.Second {
				t.Fatalf("after the upgrade: %+v", st)
			}
		})
	}
}

// A file of a later version is refused for its version, even when it has
// fields this build does not know (which alone would make it corrupt, the
// file to move away): one line naming the file, which is left untouched
// (TestCorrupt checks every call).
func TestNewerVersionRefusedForItsVersion(t *testing.T) {
	s := open(t, t.TempDir())
	newer := `{"version":4,"target":2,"quota":{"max":9},"entries":[]}` + "\n" + `{"op":"lease2","id":"x"}` + "\n"
	if err := os.WriteFile(s.Path(), []byte(newer), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := s.Load(context.Background())
	want := s.Path() + ": store version 4, written by a newer sandboxpool: this build reads versions 1 to 3 (left untouched: use the newer build)"
	if err == nil || err.Error() != want || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Load: %v, want %q", err, want)
	}
	if err := s.SetTarget(context.Background(), 3); err == nil {
		t.Fatal("SetTarget on a newer file: no error")
	}
	if got := readFile(t, s.Path()); string(got) != newer {
		t.Fatalf("the newer file was rewritten: %s", got)
	}
}
