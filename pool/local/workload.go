package local

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

var _ pool.WorkloadBackend = (*Backend)(nil)

// workload is what a sandbox runs: a command, or the built-in server
// (after a warm-up). As stored: {"cmd":"..."}, {"warmup":"2s"}, {} for the
// built-in server at once.
type workload struct {
	Cmd    string `json:"cmd,omitempty"`
	Warmup string `json:"warmup,omitempty"` // a duration; only the built-in server waits
}

func newWorkload(cmd string, warmup time.Duration) *workload {
	w := &workload{Cmd: cmd}
	if cmd == "" && warmup > 0 {
		w.Warmup = warmup.String()
	}
	return w
}

func (w *workload) warmup() time.Duration {
	d, _ := time.ParseDuration(w.Warmup) // checked by parseWorkload
	return d
}

func (w *workload) encode() string {
	b, _ := json.Marshal(w)
	return string(b)
}

// parseWorkload reads a stored workload; one with fields this build does
// not know is refused, not half understood.
func parseWorkload(s string) (*workload, error) {
	var w workload
	dec := json.NewDecoder(bytes.NewReader([]byte(s)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("local workload %q: %w", s, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("local workload %q: trailing data", s)
	}
	if w.Warmup != "" {
		if d, err := time.ParseDuration(w.Warmup); err != nil || d < 0 {
			return nil, fmt.Errorf("local workload %q: bad warmup", s)
		}
	}
	return newWorkload(w.Cmd, w.warmup()), nil
}

// Workload implements pool.WorkloadBackend: what Create starts now.
func (b *Backend) Workload() string { return b.work.Load().encode() }

// UseWorkload implements pool.WorkloadBackend: Create starts w from now on.
func (b *Backend) UseWorkload(s string) error {
	w, err := parseWorkload(s)
	if err != nil {
		return err
	}
	b.setWorkload(w)
	return nil
}

func (b *Backend) setWorkload(w *workload) {
	if w.Cmd != "" {
		b.hadCmd.Store(true)
	}
	b.work.Store(w)
}

// DescribeWorkload implements pool.WorkloadBackend, as the flags say it.
func (b *Backend) DescribeWorkload(s string) string {
	w, err := parseWorkload(s)
	switch {
	case err != nil:
		return "an unknown workload " + strconv.Quote(s)
	case w.Cmd != "":
		return "--cmd " + strconv.Quote(w.Cmd)
	case w.Warmup != "":
		return "the built-in server (--warmup " + w.Warmup + ")"
	}
	return "the built-in server"
}
