package modalx

import (
	"context"
	"errors"
	"io"
	"sync"

	pb "github.com/modal-labs/libmodal/modal-go/proto/modal_proto"
	"github.com/sandboxpool/sandboxpool/pool"
)

var _ pool.LogReader = (*Backend)(nil)

// logKeep bounds what is kept of one sandbox's output in this process.
const logKeep = 1 << 20

// sandboxLog is what this process read of a sandbox's stdout and stderr:
// each read asks only for what came after (SandboxGetLogs from the last
// entry id), so following a log costs what it grows by.
type sandboxLog struct {
	mu   sync.Mutex
	last map[pb.FileDescriptor]string
	done map[pb.FileDescriptor]bool
	data []byte
	base int64 // bytes dropped from the front
}

func (c *core) sandboxLog(id string) *sandboxLog {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.logs == nil {
		c.logs = map[string]*sandboxLog{}
	}
	l := c.logs[id]
	if l == nil {
		l = &sandboxLog{last: map[pb.FileDescriptor]string{}, done: map[pb.FileDescriptor]bool{}}
		c.logs[id] = l
	}
	return l
}

// ReadLog returns up to max bytes of a sandbox's output (stdout and stderr,
// in the order read) from offset, and the offset after them; offset < 0
// means the last max bytes. It implements pool.LogReader.
func (b *Backend) ReadLog(ctx context.Context, id string, offset int64, max int) ([]byte, int64, error) {
	c := b.c
	if c.raw == nil {
		return nil, 0, errors.New("modal: reading logs needs the SDK's connection")
	}
	l := c.sandboxLog(id)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, fd := range []pb.FileDescriptor{pb.FileDescriptor_FILE_DESCRIPTOR_STDOUT, pb.FileDescriptor_FILE_DESCRIPTOR_STDERR} {
		if err := l.fetch(ctx, c, id, fd); err != nil {
			return nil, 0, wrap("reading the log of sandbox "+id, err)
		}
	}
	total := l.base + int64(len(l.data))
	if offset < 0 {
		offset = total - int64(max)
	}
	offset = min(max64(offset, l.base), total)
	end := min(offset+int64(max), total)
	out := append([]byte(nil), l.data[offset-l.base:end-l.base]...)
	return out, end, nil
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// fetch appends what one stream has after the last entry read; it waits
// at most a tenth of a second for more.
func (l *sandboxLog) fetch(ctx context.Context, c *core, id string, fd pb.FileDescriptor) error {
	if l.done[fd] {
		return nil
	}
	last := l.last[fd]
	if last == "" {
		last = "0-0"
	}
	stream, err := c.raw.SandboxGetLogs(ctx, pb.SandboxGetLogsRequest_builder{SandboxId: id, FileDescriptor: fd,
		Timeout: 0.1, LastEntryId: last}.Build())
	if err != nil {
		return err
	}
	for {
		batch, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		for _, it := range batch.GetItems() {
			l.data = append(l.data, it.GetData()...)
		}
		if e := batch.GetEntryId(); e != "" {
			l.last[fd] = e
		}
		if batch.GetEof() {
			l.done[fd] = true
		}
		if over := len(l.data) - logKeep; over > 0 {
			l.data = append([]byte(nil), l.data[over:]...)
			l.base += int64(over)
		}
	}
}
