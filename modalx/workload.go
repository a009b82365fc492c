package modalx

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/sandboxpool/sandboxpool/pool"
)

var _ pool.WorkloadBackend = (*Backend)(nil)

// workload is what a sandbox runs: an image, a command and the port its
// tunnel exposes. As stored: {"image":"...","cmd":"...","port":8080}.
type workload struct {
	Image string `json:"image"`
	Cmd   string `json:"cmd"`
	Port  int    `json:"port"`
}

func (w workload) encode() string {
	b, _ := json.Marshal(w)
	return string(b)
}

// parseWorkload reads a stored workload; one with fields this build does
// not know is refused, not half understood.
func parseWorkload(s string) (workload, error) {
	var w workload
	dec := json.NewDecoder(bytes.NewReader([]byte(s)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return workload{}, fmt.Errorf("modal workload %q: %w", s, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return workload{}, fmt.Errorf("modal workload %q: trailing data", s)
	}
	if w.Image == "" || w.Cmd == "" || w.Port < 1 || w.Port > 65535 {
		return workload{}, fmt.Errorf("modal workload %q: want an image, a command and a port in 1..65535", s)
	}
	return w, nil
}

// current is what Create starts now.
func (c *core) current() (w workload, cmd []string) {
	c.workMu.Lock()
	defer c.workMu.Unlock()
	return c.work, c.cmd
}

// Workload implements pool.WorkloadBackend: what Create starts now.
func (b *Backend) Workload() string {
	w, _ := b.c.current()
	return w.encode()
}

// UseWorkload implements pool.WorkloadBackend: Create starts s from now
// on; another image is built at the next Create that needs it.
func (b *Backend) UseWorkload(s string) error {
	w, err := parseWorkload(s)
	if err != nil {
		return err
	}
	c := b.c
	c.workMu.Lock()
	defer c.workMu.Unlock()
	c.work, c.cmd = w, splitCmd(w.Cmd, w.Port)
	return nil
}

// DescribeWorkload implements pool.WorkloadBackend, as the flags say it.
func (b *Backend) DescribeWorkload(s string) string {
	w, err := parseWorkload(s)
	if err != nil {
		return "an unknown workload " + strconv.Quote(s)
	}
	return fmt.Sprintf("--image %s --cmd %s --port %d", w.Image, strconv.Quote(w.Cmd), w.Port)
}

// workloadKey is what a sandbox's TagWorkload says of the workload s (as
// Workload gives it): short, as tags should be, and the same for the same
// workload in every process.
func workloadKey(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:8])
}

// WorkloadKey implements pool.WorkloadKeyer: List says what a sandbox runs
// by workloadKey.
func (b *Backend) WorkloadKey(w string) string { return workloadKey(w) }
