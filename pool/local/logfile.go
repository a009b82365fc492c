package local

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
)

// logFile is a sandbox's output, capped: <id>.log grows to half the cap,
// then becomes <id>.log.1 (replacing the older part) and a new <id>.log
// starts, so a chatty workload keeps its last output and never more than
// the cap on disk. Offsets are logical (bytes written since the start), so
// a reader that follows the log is not confused by a rotation.
type logFile struct {
	path string
	part int64         // the cap of one part: half the sandbox's cap
	pool *atomic.Int64 // bytes on disk of every log of the pool
	max  int64         // the pool's cap on that

	mu      sync.Mutex
	f       *os.File
	start1  int64 // logical offset where <id>.log.1 begins
	start   int64 // where <id>.log begins (= end of <id>.log.1)
	size    int64 // bytes in <id>.log
	dropped bool  // the pool's cap was hit: said once in the log
	closed  bool
}

func newLogFile(path string, capBytes int64, pool *atomic.Int64, poolMax int64) *logFile {
	return &logFile{path: path, part: max(capBytes/2, 1024), pool: pool, max: poolMax}
}

// Write appends p, rotating first when p does not fit in the current part.
// It never fails: a workload's output that cannot be kept is dropped, not
// pushed back at the workload. Offsets count only what was kept.
func (l *logFile) Write(p []byte) (int, error) {
	n := len(p)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return n, nil
	}
	if int64(len(p)) > l.part {
		p = p[int64(len(p))-l.part:] // more than a part at once: keep its end
	}
	if l.size+int64(len(p)) > l.part {
		l.rotate()
	}
	if l.pool.Load()+int64(len(p)) > l.max {
		if !l.dropped {
			l.dropped = true
			l.write([]byte("\n[sandboxpool: the pool's log budget is used up; output dropped]\n"))
		}
		return n, nil
	}
	l.dropped = false
	l.write(p)
	return n, nil
}

func (l *logFile) write(p []byte) {
	if l.f == nil {
		f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return
		}
		l.f = f
	}
	k, _ := l.f.Write(p)
	l.size += int64(k)
	l.pool.Add(int64(k))
}

// rotate makes the current part the kept one: <id>.log becomes <id>.log.1.
func (l *logFile) rotate() {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	l.dropFile(l.path + ".1")
	if l.size > 0 && os.Rename(l.path, l.path+".1") != nil {
		l.dropFile(l.path)
		l.start += l.size
		l.size = 0
	}
	l.start1 = l.start
	l.start += l.size
	l.size = 0
}

// dropFile removes one part and gives its bytes back to the pool's budget.
func (l *logFile) dropFile(path string) {
	if st, err := os.Stat(path); err == nil && os.Remove(path) == nil {
		l.pool.Add(-st.Size())
	}
}

// ReadAt reads up to max bytes from logical offset off (off < 0: the last
// max bytes) and returns them with the offset just after.
func (l *logFile) ReadAt(off int64, max int) ([]byte, int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	end := l.start + l.size
	if max <= 0 {
		return nil, end, nil
	}
	if off < 0 {
		off = end - int64(max)
	}
	off = min(end, off)
	if off < l.start1 {
		off = l.start1
	}
	if off >= end {
		return nil, end, nil
	}
	path, base, limit := l.path, l.start, end
	if off < l.start {
		path, base, limit = l.path+".1", l.start1, l.start
	}
	n := min(int64(max), limit-off)
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, off, nil
		}
		return nil, off, err
	}
	defer f.Close()
	buf := make([]byte, n)
	k, err := f.ReadAt(buf, off-base)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, off, err
	}
	return buf[:k], off + int64(k), nil
}

// Tail returns the last lines of output (at most lines lines, 4 KB).
func (l *logFile) Tail(lines int) string {
	data, _, _ := l.ReadAt(-1, 4096)
	data = bytes.TrimRight(data, "\n")
	for i, n := len(data)-1, 0; i >= 0; i-- {
		if data[i] == '\n' {
			if n++; n == lines {
				data = data[i+1:]
				break
			}
		}
	}
	return string(data)
}

// Close stops writing; RemoveFiles deletes both parts.
func (l *logFile) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

func (l *logFile) RemoveFiles() {
	l.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropFile(l.path)
	l.dropFile(l.path + ".1")
	l.size = 0
}
