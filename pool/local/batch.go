package local

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/sandboxpool/sandboxpool/pool"
)

// createBatcher sends the creations asked for at once (a pool filling or
// growing starts up to --max-creating together) to the agent in one
// request, and each caller gets its own answer: one round trip, and one
// wake-up of each side, for a batch instead of for every sandbox. A
// creation asked while a batch is on its way goes with the next one.
type createBatcher struct {
	mu      sync.Mutex
	pending []*pendingCreate
	sending bool // a sender goroutine runs
	// single: the agent predates batches (it outlived an upgrade of the
	// binary): one request per creation, as it understands.
	single atomic.Bool
}

type pendingCreate struct {
	req  request
	done chan struct{} // closed when resp and err are set
	resp response
	err  error
	// ctx is the caller's; the batch gives up only once all its callers did.
	ctx context.Context
}

// maxBatch and maxBatchBytes bound the creations of one request, well
// under the agent's maxRequest (a --cmd creation carries an environment).
const (
	maxBatch      = 64
	maxBatchBytes = maxRequest / 4
)

// requestSize is about the size of req on the wire.
func requestSize(req request) int {
	n := 256 + len(req.Cmd)
	for _, kv := range req.Env {
		n += len(kv) + 4
	}
	return n
}

// do creates one sandbox, in a batch with those asked for meanwhile.
func (q *createBatcher) do(ctx context.Context, b *Backend, req request) (response, error) {
	if q.single.Load() {
		return b.call(ctx, req, true)
	}
	p := &pendingCreate{req: req, done: make(chan struct{}), ctx: ctx}
	q.mu.Lock()
	q.pending = append(q.pending, p)
	start := !q.sending
	q.sending = true
	q.mu.Unlock()
	if start {
		go q.send(b)
	}
	select {
	case <-p.done:
		return p.resp, p.err
	case <-ctx.Done():
		return response{}, ctx.Err()
	}
}

// send sends what is pending, batch after batch, until nothing is.
func (q *createBatcher) send(b *Backend) {
	for {
		q.mu.Lock()
		n, size := 0, 0
		for n < len(q.pending) && n < maxBatch && (n == 0 || size < maxBatchBytes) {
			size += requestSize(q.pending[n].req)
			n++
		}
		batch := q.pending[:n]
		q.pending = q.pending[n:]
		if len(batch) == 0 {
			q.pending = nil
			q.sending = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		q.sendBatch(b, batch)
	}
}

func (q *createBatcher) sendBatch(b *Backend, batch []*pendingCreate) {
	// The batch's request ends when every one of its callers gave up.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var left atomic.Int64
	left.Store(int64(len(batch)))
	for _, p := range batch {
		stop := context.AfterFunc(p.ctx, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		})
		defer stop()
	}
	finish := func(p *pendingCreate, resp response, err error) {
		p.resp, p.err = resp, err
		close(p.done)
	}
	if len(batch) == 1 || q.single.Load() {
		for _, p := range batch {
			resp, err := b.call(p.ctx, p.req, true)
			finish(p, resp, err)
		}
		return
	}
	req := request{Op: opCreateBatch, Batch: make([]request, len(batch))}
	for i, p := range batch {
		req.Batch[i] = p.req
	}
	resp, err := b.call(ctx, req, true)
	if err == nil && len(resp.Batch) != len(batch) {
		err = fmt.Errorf("bad answer from the local agent: %d answers to %d creations", len(resp.Batch), len(batch))
	}
	if err != nil && isUnknownOp(err) {
		q.single.Store(true)
		for _, p := range batch {
			resp, err := b.call(p.ctx, p.req, true)
			finish(p, resp, err)
		}
		return
	}
	for i, p := range batch {
		if err != nil {
			finish(p, response{}, err)
			continue
		}
		r := resp.Batch[i]
		switch {
		case r.NotFound:
			finish(p, r, fmt.Errorf("%w: %s", pool.ErrNotFound, r.Error))
		case r.Error != "":
			finish(p, r, errors.New(r.Error))
		default:
			finish(p, r, nil)
		}
	}
}

// isUnknownOp is an older agent's answer to a batch.
func isUnknownOp(err error) bool {
	return err.Error() == fmt.Sprintf("unknown op %q", opCreateBatch)
}
