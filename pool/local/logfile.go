package local

import (
	"bytes"
	"container/list"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// logFile is a sandbox's output, capped: <id>.log grows to half the cap,
// then becomes <id>.log.1 (replacing the older part) and a new <id>.log
// starts, so a chatty workload keeps its last output and never more than
// the cap on disk. Offsets are logical (bytes written since the start), so
// a reader that follows the log is not confused by a rotation.
//
// A log holds no file descriptor of its own: its first memMax bytes stay in
// memory (most sandboxes, the built-in ones above all, say one line and
// never touch the disk), and writes past that go through the agent's fdCache,
// which keeps a bounded number of log files open. So ten thousand live
// sandboxes cost no ten thousand descriptors.
type logFile struct {
	path string
	part int64         // the cap of one part: half the sandbox's cap
	pool *atomic.Int64 // bytes on disk of every log of the pool
	max  int64         // the pool's cap on that
	fds  *fdCache
	keep int64 // how much of the current part may stay in memory

	mu      sync.Mutex
	mem     []byte // the current part while it is not on disk
	onDisk  bool   // the current part is <id>.log (never back to memory)
	start1  int64  // logical offset where <id>.log.1 begins
	start   int64  // where <id>.log begins (= end of <id>.log.1)
	size    int64  // bytes in the current part
	dropped bool   // the pool's cap was hit: said once in the log
	closed  bool
}

// memMax is how much of a log stays in memory before it goes to disk.
const memMax = 2048

func newLogFile(path string, capBytes int64, pool *atomic.Int64, poolMax int64, fds *fdCache) *logFile {
	part := max(capBytes/2, 1024)
	return &logFile{path: path, part: part, keep: min(memMax, part/2), pool: pool, max: poolMax, fds: fds}
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
	if !l.onDisk && l.size+int64(len(p)) <= l.keep {
		l.mem = append(l.mem, p...)
		l.size += int64(len(p))
		return n, nil
	}
	if l.size+int64(len(p)) > l.part {
		l.rotate()
	}
	if l.pool.Load()+int64(len(l.mem))+int64(len(p)) > l.max {
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

// write appends p to <id>.log, moving the part held in memory there first.
func (l *logFile) write(p []byte) {
	if !l.onDisk {
		l.onDisk = true
		if len(l.mem) > 0 {
			p = append(l.mem, p...)
			l.size -= int64(len(l.mem))
		}
		l.mem = nil
	}
	k, _ := l.fds.write(l, p)
	l.size += int64(k)
	l.pool.Add(int64(k))
}

// rotate makes the current part the kept one: <id>.log becomes <id>.log.1.
func (l *logFile) rotate() {
	l.fds.close(l)
	if !l.onDisk { // a part in memory goes to disk to be kept
		l.write(nil)
		l.fds.close(l)
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
	if path == l.path && !l.onDisk {
		i := off - base
		return bytes.Clone(l.mem[i : i+n]), off + n, nil
	}
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
	l.fds.close(l)
}

func (l *logFile) RemoveFiles() {
	l.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.onDisk { // a log that stayed in memory has no file
		l.dropFile(l.path)
		l.dropFile(l.path + ".1")
	}
	l.mem = nil
	l.size = 0
}

// fdCache keeps the agent's open log files: at most max, the least recently
// written closed first. Writes go through it under its lock (appends to the
// page cache: short), so that a file it closes is never in use. Lock order:
// logFile.mu, then fdCache.mu.
type fdCache struct {
	max int

	mu    sync.Mutex
	lru   list.List // of *logFile, most recently written first
	open  map[*logFile]*list.Element
	files map[*logFile]*os.File
}

func newFDCache(max int) *fdCache {
	return &fdCache{max: max, open: map[*logFile]*list.Element{}, files: map[*logFile]*os.File{}}
}

// fdCacheSize is how many log files an agent keeps open: a small share of
// its descriptor limit (it needs one per sandbox for sockets and pipes).
func fdCacheSize() int {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) != nil {
		return 8
	}
	return int(min(max(rl.Cur/32, 4), 64))
}

// write appends p to l's file (opened, and created, when not open).
func (c *fdCache) write(l *logFile, p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.files[l]
	if f == nil {
		for c.lru.Len() >= c.max {
			c.closeLocked(c.lru.Back().Value.(*logFile))
		}
		var err error
		if f, err = os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
			return 0, err
		}
		c.files[l] = f
		c.open[l] = c.lru.PushFront(l)
	} else {
		c.lru.MoveToFront(c.open[l])
	}
	return f.Write(p)
}

// close closes l's file if it is open.
func (c *fdCache) close(l *logFile) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked(l)
}

func (c *fdCache) closeLocked(l *logFile) {
	f := c.files[l]
	if f == nil {
		return
	}
	f.Close()
	c.lru.Remove(c.open[l])
	delete(c.files, l)
	delete(c.open, l)
}

// Len is how many log files are open.
func (c *fdCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
