package modalx

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"

	pickle "github.com/kisielk/og-rek"
	modal "github.com/modal-labs/libmodal/modal-go"
	pb "github.com/modal-labs/libmodal/modal-go/proto/modal_proto"
)

// Reads that cost the same at 3 sandboxes and at 1,000 (issue 11).
//
// A partition only ever loses items at its head (an atomic get pops the
// oldest; a clear or its TTL empties it) and gains them at its tail, and
// its entry ids only grow. So what it holds now is: the items this process
// saw before from the current head's id on, plus the items after the last
// one it saw. Two QueueNextItems calls find both (the head, and what follows
// the last seen item), whatever the partition's length; the SDK's Iterate
// reads it all, one call per 100 items.

type entryID struct{ ms, seq uint64 }

// parseEntryID reads a stream entry id ("<ms>-<seq>"); ok is false for
// any other form, and then partitions are read whole (the SDK's way).
func parseEntryID(s string) (entryID, bool) {
	a, b, found := strings.Cut(s, "-")
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	return entryID{ms, seq}, found && err1 == nil && err2 == nil
}

func (e entryID) less(o entryID) bool { return e.ms < o.ms || (e.ms == o.ms && e.seq < o.seq) }

type rawItem struct {
	id    entryID
	entry string
	v     any
}

// partCache is what this process last read of one partition.
type partCache struct {
	mu      sync.Mutex
	queueID string
	items   []rawItem
}

func (s *Store) partCache(part string) *partCache {
	s.pcMu.Lock()
	defer s.pcMu.Unlock()
	pc := s.pcs[part]
	if pc == nil {
		pc = &partCache{}
		s.pcs[part] = pc
	}
	return pc
}

// nextItems is one QueueNextItems call, decoded.
func (s *Store) nextItems(ctx context.Context, q *modal.Queue, part, after string) ([]rawItem, error) {
	var key []byte
	if part != "" {
		key = []byte(part)
	}
	resp, err := s.c.raw.QueueNextItems(ctx, pb.QueueNextItemsRequest_builder{
		QueueId: q.QueueID, PartitionKey: key, ItemPollTimeout: 0, LastEntryId: after}.Build())
	if err != nil {
		return nil, err
	}
	out := make([]rawItem, 0, len(resp.GetItems()))
	for _, it := range resp.GetItems() {
		v, err := pickle.NewDecoder(bytes.NewReader(it.GetValue())).Decode()
		if err != nil {
			v = nil // not ours: skipped by decode
		}
		id, ok := parseEntryID(it.GetEntryId())
		if !ok {
			return nil, errOpaqueIDs
		}
		out = append(out, rawItem{id: id, entry: it.GetEntryId(), v: v})
	}
	return out, nil
}

// readPart returns a partition's items, reading only its head and what is
// new since the last read.
func (s *Store) readPart(ctx context.Context, q *modal.Queue, part string) ([]any, error) {
	if s.c.raw == nil || s.opaque.Load() {
		return itemsOf(ctx, q, part)
	}
	out, err := s.readPartIncr(ctx, q, part)
	if err == errOpaqueIDs {
		s.opaque.Store(true)
		return itemsOf(ctx, q, part)
	}
	return out, err
}

var errOpaqueIDs = errors.New("queue entry ids are not stream ids")

func (s *Store) readPartIncr(ctx context.Context, q *modal.Queue, part string) ([]any, error) {
	pc := s.partCache(part)
	pc.mu.Lock()
	defer pc.mu.Unlock()
	head, err := s.nextItems(ctx, q, part, "")
	if err != nil {
		return nil, err
	}
	if len(head) == 0 {
		pc.items, pc.queueID = nil, q.QueueID
		return nil, nil
	}
	var items []rawItem
	if pc.queueID == q.QueueID {
		for i, it := range pc.items {
			if !it.id.less(head[0].id) {
				if it.id == head[0].id {
					items = append(items, pc.items[i:]...)
				}
				break
			}
		}
	}
	if len(items) == 0 {
		items = append(items, head...) // nothing known from the head on: read it all
	} else {
		last := items[len(items)-1].id
		for _, it := range head {
			if last.less(it.id) {
				items = append(items, it)
			}
		}
	}
	for {
		more, err := s.nextItems(ctx, q, part, items[len(items)-1].entry)
		if err != nil {
			return nil, err
		}
		if len(more) == 0 {
			break
		}
		items = append(items, more...)
	}
	pc.items, pc.queueID = items, q.QueueID
	out := make([]any, len(items))
	for i, it := range items {
		out[i] = it.v
	}
	return out, nil
}

// ---- the sandbox list, swept a page at a time ----

// listCache is every running sandbox of the pool as this process knows it.
// The first list reads every page; later ones read the newest page (where
// new sandboxes are) and one older page in turn, so a list costs two calls
// at any size and each sandbox is checked again every n/100 lists. One that
// ends meanwhile fails its health checks, and Modal ends each at its timeout.
type listCache struct {
	mu     sync.Mutex
	full   bool
	infos  map[string]*pb.SandboxInfo
	cursor float64 // created_at before which the next older page starts; 0: from the newest
}

func (c *core) listPage(ctx context.Context, before float64) ([]*pb.SandboxInfo, error) {
	tags := []*pb.SandboxTag{pb.SandboxTag_builder{TagName: TagPool, TagValue: c.opts.Pool}.Build()}
	resp, err := c.raw.SandboxList(ctx, pb.SandboxListRequest_builder{AppId: c.app.AppID, BeforeTimestamp: before,
		EnvironmentName: c.opts.Environment, Tags: tags}.Build())
	if err != nil {
		return nil, err
	}
	return resp.GetSandboxes(), nil
}

func oldest(page []*pb.SandboxInfo) float64 {
	o := page[0].GetCreatedAt()
	for _, i := range page {
		o = min(o, i.GetCreatedAt())
	}
	return o
}

// sweep drops the cached sandboxes created in [from, to) that page does not
// hold, then adds the page.
func (lc *listCache) sweep(page []*pb.SandboxInfo, from, to float64) {
	in := make(map[string]bool, len(page))
	for _, i := range page {
		in[i.GetId()] = true
	}
	for id, i := range lc.infos {
		if at := i.GetCreatedAt(); at >= from && (to == 0 || at < to) && !in[id] {
			delete(lc.infos, id)
		}
	}
	for _, i := range page {
		lc.infos[i.GetId()] = i
	}
}

// listInfos returns the pool's running sandboxes as SandboxList reports them.
func (c *core) listInfos(ctx context.Context) ([]*pb.SandboxInfo, error) {
	lc := &c.list
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if !lc.full {
		all := map[string]*pb.SandboxInfo{}
		before := 0.0
		for {
			page, err := c.listPage(ctx, before)
			if err != nil {
				return nil, err
			}
			if len(page) == 0 {
				break
			}
			for _, i := range page {
				all[i.GetId()] = i
			}
			before = oldest(page)
		}
		lc.infos, lc.full, lc.cursor = all, true, 0
	} else {
		page, err := c.listPage(ctx, 0)
		if err != nil {
			return nil, err
		}
		if len(page) == 0 {
			lc.infos, lc.cursor = map[string]*pb.SandboxInfo{}, 0
		} else {
			newest := oldest(page)
			lc.sweep(page, newest, 0)
			before := lc.cursor
			if before == 0 || before > newest {
				before = newest
			}
			older, err := c.listPage(ctx, before)
			if err != nil {
				return nil, err
			}
			if len(older) == 0 {
				lc.sweep(nil, 0, before) // nothing older runs
				lc.cursor = 0
			} else {
				o := oldest(older)
				lc.sweep(older, o, before)
				lc.cursor = o
			}
		}
	}
	now := float64(c.clk.Now().UnixNano()) / 1e9
	out := make([]*pb.SandboxInfo, 0, len(lc.infos))
	for id, i := range lc.infos {
		if t := i.GetTimeoutSecs(); t > 0 && i.GetCreatedAt()+float64(t) < now {
			delete(lc.infos, id) // Modal ended it at its timeout
			continue
		}
		out = append(out, i)
	}
	return out, nil
}

// forgetListed drops a sandbox this process terminated from the list.
func (c *core) forgetListed(id string) {
	c.list.mu.Lock()
	delete(c.list.infos, id)
	c.list.mu.Unlock()
}
