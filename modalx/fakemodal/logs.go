package fakemodal

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	pb "github.com/modal-labs/libmodal/modal-go/proto/modal_proto"
	"google.golang.org/grpc"
)

// A fake sandbox's output is what `python -m http.server` writes: a line
// on stdout when it starts, one on stderr per request.

type logLine struct {
	seq  int
	data string
}

type sandboxLogs struct {
	lines   map[pb.FileDescriptor][]logLine
	seq     int
	changed chan struct{}
}

func (sb *sandbox) logf(fd pb.FileDescriptor, format string, args ...any) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.logs.lines == nil {
		sb.logs.lines = map[pb.FileDescriptor][]logLine{}
		sb.logs.changed = make(chan struct{})
	}
	sb.logs.seq++
	sb.logs.lines[fd] = append(sb.logs.lines[fd], logLine{sb.logs.seq, fmt.Sprintf(format, args...)})
	close(sb.logs.changed)
	sb.logs.changed = make(chan struct{})
}

func (sb *sandbox) logRequest(r *http.Request, code int) {
	sb.logf(pb.FileDescriptor_FILE_DESCRIPTOR_STDERR, "%s - - [%s] \"%s %s %s\" %d -\n",
		strings.Split(r.RemoteAddr, ":")[0], time.Now().Format("02/Jan/2006 15:04:05"), r.Method, r.URL.RequestURI(), r.Proto, code)
}

// SandboxGetLogs streams a sandbox's output after LastEntryId, waiting up
// to Timeout for more; it ends with an EOF batch once the sandbox finished.
func (v *service) SandboxGetLogs(r *pb.SandboxGetLogsRequest, stream grpc.ServerStreamingServer[pb.TaskLogsBatch]) error {
	sb, err := v.s.sandbox(r.GetSandboxId())
	if err != nil {
		return err
	}
	after, _ := strconv.Atoi(strings.TrimSuffix(r.GetLastEntryId(), "-0"))
	deadline := time.Now().Add(time.Duration(float64(r.GetTimeout()) * float64(time.Second)))
	for {
		sb.mu.Lock()
		var items []*pb.TaskLogs
		last := after
		for _, l := range sb.logs.lines[r.GetFileDescriptor()] {
			if l.seq > after {
				items = append(items, pb.TaskLogs_builder{Data: l.data, FileDescriptor: r.GetFileDescriptor()}.Build())
				last = l.seq
			}
		}
		done := sb.result != nil
		changed := sb.logs.changed
		sb.mu.Unlock()
		if len(items) > 0 {
			if err := stream.Send(pb.TaskLogsBatch_builder{TaskId: "ta-" + sb.id, Items: items, EntryId: strconv.Itoa(last) + "-0"}.Build()); err != nil {
				return err
			}
			after = last
			continue
		}
		if done {
			return stream.Send(pb.TaskLogsBatch_builder{TaskId: "ta-" + sb.id, EntryId: strconv.Itoa(after) + "-0", Eof: true}.Build())
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil // the client asks again from its last entry
		}
		t := time.NewTimer(left)
		select {
		case <-changed:
		case <-sb.finished:
		case <-t.C:
		case <-stream.Context().Done():
			t.Stop()
			return stream.Context().Err()
		}
		t.Stop()
	}
}
