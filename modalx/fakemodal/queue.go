package fakemodal

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	pb "github.com/modal-labs/libmodal/modal-go/proto/modal_proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

type emptyResp = emptypb.Empty

// Modal's documented limits: 5,000 items per partition, TTL 24 h after the last put.
const (
	maxPartitionItems   = 5000
	defaultPartitionTTL = 24 * time.Hour
)

type item struct {
	seq   int64
	value []byte
}

type partition struct {
	items   []item
	lastPut time.Time
	ttl     time.Duration
}

type queue struct {
	id, name string
	parts    map[string]*partition
	changed  chan struct{} // closed and replaced on every put
	nextSeq  int64
}

// part returns a live partition, clearing it first if its TTL has passed.
func (q *queue) part(key string, create bool) *partition {
	p := q.parts[key]
	if p != nil && time.Since(p.lastPut) > p.ttl {
		delete(q.parts, key)
		p = nil
	}
	if p == nil && create {
		p = &partition{}
		q.parts[key] = p
	}
	return p
}

// ClearQueue empties every partition of a named queue, as Modal may do 24 h
// after the last put. It reports whether the queue exists.
func (s *Server) ClearQueue(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queues[s.queueNames[name]]
	if q == nil {
		return false
	}
	q.parts = map[string]*partition{}
	return true
}

// QueueItems returns the raw (pickled) items of one partition ("" = default).
func (s *Server) QueueItems(name, partition string) [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queues[s.queueNames[name]]
	if q == nil {
		return nil
	}
	p := q.part(partition, false)
	if p == nil {
		return nil
	}
	out := make([][]byte, len(p.items))
	for i, it := range p.items {
		out[i] = it.value
	}
	return out
}

func (s *Server) queue(id string) (*queue, error) {
	q := s.queues[id]
	if q == nil {
		return nil, status.Errorf(codes.NotFound, "Queue %s not found", id)
	}
	return q, nil
}

func (v *service) QueueGetOrCreate(ctx context.Context, r *pb.QueueGetOrCreateRequest) (*pb.QueueGetOrCreateResponse, error) {
	s := v.s
	s.mu.Lock()
	defer s.mu.Unlock()
	// Named queues are keyed by name alone: the fake has one environment.
	name := r.GetDeploymentName()
	if r.GetObjectCreationType() == pb.ObjectCreationType_OBJECT_CREATION_TYPE_EPHEMERAL {
		name = ""
	} else if id, ok := s.queueNames[name]; ok {
		return pb.QueueGetOrCreateResponse_builder{QueueId: id}.Build(), nil
	} else if r.GetObjectCreationType() != pb.ObjectCreationType_OBJECT_CREATION_TYPE_CREATE_IF_MISSING {
		return nil, status.Errorf(codes.NotFound, "Queue '%s' not found", name)
	}
	id := s.newIDLocked("qu")
	s.queues[id] = &queue{id: id, name: name, parts: map[string]*partition{}, changed: make(chan struct{})}
	if name != "" {
		s.queueNames[name] = id
	}
	return pb.QueueGetOrCreateResponse_builder{QueueId: id}.Build(), nil
}

func (v *service) QueueDelete(ctx context.Context, r *pb.QueueDeleteRequest) (*emptyResp, error) {
	s := v.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.queue(r.GetQueueId()); err != nil {
		return nil, err
	}
	delete(s.queues, r.GetQueueId())
	for k, id := range s.queueNames {
		if id == r.GetQueueId() {
			delete(s.queueNames, k)
		}
	}
	return &emptyResp{}, nil
}

func (v *service) QueueHeartbeat(ctx context.Context, r *pb.QueueHeartbeatRequest) (*emptyResp, error) {
	return &emptyResp{}, nil
}

func (v *service) QueuePut(ctx context.Context, r *pb.QueuePutRequest) (*emptyResp, error) {
	s := v.s
	s.mu.Lock()
	defer s.mu.Unlock()
	q, err := s.queue(r.GetQueueId())
	if err != nil {
		return nil, err
	}
	p := q.part(string(r.GetPartitionKey()), true)
	if len(p.items)+len(r.GetValues()) > maxPartitionItems {
		return nil, status.Error(codes.ResourceExhausted, "Queue partition is full")
	}
	ttl := time.Duration(r.GetPartitionTtlSeconds()) * time.Second
	if ttl <= 0 || ttl > defaultPartitionTTL {
		ttl = defaultPartitionTTL
	}
	p.ttl, p.lastPut = ttl, time.Now()
	for _, val := range r.GetValues() {
		q.nextSeq++
		p.items = append(p.items, item{seq: q.nextSeq, value: val})
	}
	close(q.changed)
	q.changed = make(chan struct{})
	return &emptyResp{}, nil
}

// waitFor runs try under the lock until it reports done or the timeout passes;
// it waits for puts in between, as Modal's blocking get does.
func (s *Server) waitFor(ctx context.Context, queueID string, timeout time.Duration, try func(q *queue) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		q, err := s.queue(queueID)
		if err != nil {
			s.mu.Unlock()
			return err
		}
		if try(q) {
			s.mu.Unlock()
			return nil
		}
		ch := q.changed
		s.mu.Unlock()
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		t := time.NewTimer(left)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return status.FromContextError(ctx.Err()).Err()
		case <-s.done:
			t.Stop()
			return status.Error(codes.Unavailable, "server closing")
		}
		t.Stop()
	}
}

func seconds(f float32) time.Duration { return time.Duration(float64(f) * float64(time.Second)) }

// QueueGet pops up to NValues from the head atomically (under one lock).
func (v *service) QueueGet(ctx context.Context, r *pb.QueueGetRequest) (*pb.QueueGetResponse, error) {
	n := max(int(r.GetNValues()), 1)
	var vals [][]byte
	err := v.s.waitFor(ctx, r.GetQueueId(), seconds(r.GetTimeout()), func(q *queue) bool {
		p := q.part(string(r.GetPartitionKey()), false)
		if p == nil || len(p.items) == 0 {
			return false
		}
		k := min(n, len(p.items))
		for _, it := range p.items[:k] {
			vals = append(vals, it.value)
		}
		p.items = append([]item(nil), p.items[k:]...)
		return true
	})
	if err != nil {
		return nil, err
	}
	return pb.QueueGetResponse_builder{Values: vals}.Build(), nil
}

func (v *service) QueueLen(ctx context.Context, r *pb.QueueLenRequest) (*pb.QueueLenResponse, error) {
	s := v.s
	s.mu.Lock()
	defer s.mu.Unlock()
	q, err := s.queue(r.GetQueueId())
	if err != nil {
		return nil, err
	}
	n := 0
	if r.GetTotal() {
		for k := range q.parts {
			if p := q.part(k, false); p != nil {
				n += len(p.items)
			}
		}
	} else if p := q.part(string(r.GetPartitionKey()), false); p != nil {
		n = len(p.items)
	}
	return pb.QueueLenResponse_builder{Len: int32(n)}.Build(), nil
}

func (v *service) QueueClear(ctx context.Context, r *pb.QueueClearRequest) (*emptyResp, error) {
	s := v.s
	s.mu.Lock()
	defer s.mu.Unlock()
	q, err := s.queue(r.GetQueueId())
	if err != nil {
		return nil, err
	}
	if r.GetAllPartitions() {
		q.parts = map[string]*partition{}
	} else {
		delete(q.parts, string(r.GetPartitionKey()))
	}
	return &emptyResp{}, nil
}

func entryID(seq int64) string { return fmt.Sprintf("%d-0", seq) }

func parseEntryID(s string) int64 {
	if s == "" {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSuffix(s, "-0"), 10, 64)
	return n
}

// QueueNextItems reads (without removing) the items after LastEntryId.
func (v *service) QueueNextItems(ctx context.Context, r *pb.QueueNextItemsRequest) (*pb.QueueNextItemsResponse, error) {
	after := parseEntryID(r.GetLastEntryId())
	var out []*pb.QueueItem
	err := v.s.waitFor(ctx, r.GetQueueId(), seconds(r.GetItemPollTimeout()), func(q *queue) bool {
		p := q.part(string(r.GetPartitionKey()), false)
		if p == nil {
			return false
		}
		for _, it := range p.items {
			if it.seq > after && len(out) < v.s.opts.NextItemsBatch {
				out = append(out, pb.QueueItem_builder{Value: it.value, EntryId: entryID(it.seq)}.Build())
			}
		}
		return len(out) > 0
	})
	if err != nil {
		return nil, err
	}
	return pb.QueueNextItemsResponse_builder{Items: out}.Build(), nil
}

// Objects lists the names of the apps ("app:<env>/<name>") and named queues
// ("queue:<name>") the fake holds, sorted: what a test checks was created.
func (s *Server) Objects() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k := range s.apps {
		out = append(out, "app:"+k)
	}
	for k := range s.queueNames {
		out = append(out, "queue:"+k)
	}
	sort.Strings(out)
	return out
}
