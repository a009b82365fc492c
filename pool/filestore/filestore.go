// Package filestore is the local pool store (SPEC Backends: local): one JSON
// file per pool, every method one transaction under a cross-process file lock,
// every change written atomically (temp file, fsync, rename, fsync directory).
// Files under the directory, for pool P: P.json (the pool), P.json.tmp (the
// next write's temp file, holding the previous version), P.lock (taken by
// every transaction), P.lease and P.lease.holder (the controller lease).
package filestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofrs/flock"

	"github.com/sandboxpool/sandboxpool/pool"
)

// Store is the local store of one pool. It is safe for concurrent use, and
// any number of Stores, in this process or others, may share one file.
type Store struct {
	dir, base, path, tmp string // base is <dir>/<pool>

	dirf *os.File     // kept open to fsync renames without reopening it
	lk   *flock.Flock // <pool>.lock, taken by every transaction
	held *flock.Flock // the descriptor holding it now: lk, or one waitLock opened

	// sem serialises this Store's transactions: a *flock.Flock is one open
	// file description, so it cannot exclude its own concurrent users.
	sem    chan struct{}
	closed atomic.Bool

	// Owned by the holder of sem: buffers reused to keep the hot path light,
	// and the last file content seen with its decoded form (see remember).
	rbuf, wbuf bytes.Buffer
	cacheRaw   []byte
	cacheSt    pool.Stored

	noSync bool // benchmarks only: measure everything but the disk flush

	// Concurrent Takes of this process are served in batches (see takeBatch).
	takes       sync.Mutex
	takeQueue   []*takeReq
	takeLeading bool
}

var (
	_ pool.Store  = (*Store)(nil)
	_ pool.Leaser = (*Store)(nil)
)

// Open returns the store of pool under dir, creating dir (0700) if missing.
// Nothing is read yet: a missing file is an empty pool with no target.
func Open(dir, poolName string) (*Store, error) {
	if err := pool.ValidatePoolName(poolName); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store directory: %w", err)
	}
	dirf, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("store directory: %w", err)
	}
	base := filepath.Join(dir, poolName)
	return &Store{
		dir:  dir,
		base: base,
		path: base + ".json",
		tmp:  base + ".json.tmp",
		dirf: dirf,
		lk:   flock.New(base+".lock", flock.SetPermissions(0o600)),
		sem:  make(chan struct{}, 1),
	}, nil
}

// Path is the pool's JSON file.
func (s *Store) Path() string { return s.path }

// Close releases the store. Leases taken from it are released separately.
func (s *Store) Close() error {
	s.sem <- struct{}{} // let a running transaction finish first
	defer func() { <-s.sem }()
	if s.closed.Swap(true) {
		return nil
	}
	return errors.Join(s.lk.Close(), s.dirf.Close())
}

var errClosed = errors.New("filestore: store is closed")

// begin starts a transaction: this Store's turn, then the file lock.
// Shared is for reads; writers take it exclusively.
func (s *Store) begin(ctx context.Context, shared bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if s.closed.Load() {
		<-s.sem
		return errClosed
	}
	ok, err := tryLock(s.lk, shared)
	if ok {
		s.held = s.lk
		return nil
	}
	if err == nil {
		s.held, err = waitLock(ctx, s.lk.Path(), shared)
	}
	if err != nil {
		<-s.sem
		return fmt.Errorf("lock %s: %w", s.lk.Path(), err)
	}
	return nil
}

func (s *Store) end() {
	_ = s.held.Unlock() // it closes the descriptor, which drops the lock even if unlocking failed
	s.held = nil
	<-s.sem
}

func tryLock(fl *flock.Flock, shared bool) (bool, error) {
	if shared {
		return fl.TryRLock()
	}
	return fl.TryLock()
}

// waitLock blocks in the kernel rather than polling: the kernel wakes waiters
// at each release, so under contention every process gets its turn (pollers
// starve against a process that takes the lock back to back). flock(2) cannot
// be interrupted, so the wait runs on a fresh descriptor in a goroutine that,
// if ctx ends first, releases the lock as soon as it gets it.
func waitLock(ctx context.Context, path string, shared bool) (*flock.Flock, error) {
	fl := flock.New(path, flock.SetPermissions(0o600))
	got := make(chan error)
	abandoned := make(chan struct{})
	go func() {
		var err error
		if shared {
			err = fl.RLock()
		} else {
			err = fl.Lock()
		}
		select {
		case got <- err:
		case <-abandoned:
			fl.Unlock()
		}
	}()
	select {
	case err := <-got:
		if err != nil {
			return nil, err
		}
		return fl, nil
	case <-ctx.Done():
		close(abandoned)
		return nil, ctx.Err()
	}
}

// read loads the file; it must run inside a transaction.
func (s *Store) read() (pool.Stored, error) {
	s.rbuf.Reset()
	f, err := os.Open(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return pool.Stored{}, nil
	}
	if err != nil {
		return pool.Stored{}, fmt.Errorf("read store: %w", err)
	}
	_, err = s.rbuf.ReadFrom(f)
	f.Close()
	if err != nil {
		return pool.Stored{}, fmt.Errorf("read store %s: %w", s.path, err)
	}
	raw := s.rbuf.Bytes()
	if s.cacheRaw != nil && bytes.Equal(raw, s.cacheRaw) {
		st := s.cacheSt
		st.Entries = slices.Clone(st.Entries) // the caller may change its copy
		return st, nil
	}
	st, err := decode(raw)
	if err != nil {
		what := strings.ReplaceAll(err.Error(), "\n", " ")
		return pool.Stored{}, fmt.Errorf("%s: %w: %s (left untouched: fix or move it away)", s.path, ErrCorrupt, what)
	}
	s.remember(raw, pool.Stored{Target: st.Target, HasTarget: st.HasTarget, Entries: slices.Clone(st.Entries)})
	return st, nil
}

// write replaces the file atomically; it must run inside an exclusive
// transaction, which is also why one fixed temp name is safe. Between writes
// the temp file holds the previous version (see replace), so it is
// overwritten in place, never created anew, and a crash leaves nothing to
// clean up. The store takes ownership of st.
func (s *Store) write(st pool.Stored) error {
	if err := encode(&s.wbuf, st); err != nil {
		return fmt.Errorf("encode store %s: %w", s.path, err)
	}
	data := s.wbuf.Bytes()
	f, err := os.OpenFile(s.tmp, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("write store: %w", err)
	}
	_, err = f.WriteAt(data, 0)
	if err == nil {
		err = f.Truncate(int64(len(data)))
	}
	if err == nil && !s.noSync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = replace(s.tmp, s.path)
	}
	if err != nil {
		return fmt.Errorf("write store %s: %w", s.path, err)
	}
	s.remember(data, st)
	if !s.noSync {
		// The rename is durable only once the directory is.
		if err := s.dirf.Sync(); err != nil {
			return fmt.Errorf("sync store directory %s: %w", s.dir, err)
		}
	}
	return nil
}

// remember caches the decoded form of the file's bytes: the next transaction
// that reads the very same bytes skips decoding, the costliest step left.
// Byte equality makes this exact whoever wrote the file.
func (s *Store) remember(raw []byte, st pool.Stored) {
	s.cacheRaw = append(s.cacheRaw[:0], raw...)
	s.cacheSt = st
}

// update runs fn on the current pool in an exclusive transaction and writes
// the result when fn reports a change.
func (s *Store) update(ctx context.Context, fn func(st *pool.Stored) (changed bool, err error)) error {
	if err := s.begin(ctx, false); err != nil {
		return err
	}
	defer s.end()
	st, err := s.read()
	if err != nil {
		return err
	}
	changed, err := fn(&st)
	if err != nil || !changed {
		return err
	}
	return s.write(st)
}

// Load reads the whole pool under a shared lock, so it never sees a half state.
func (s *Store) Load(ctx context.Context) (pool.Stored, error) {
	if err := s.begin(ctx, true); err != nil {
		return pool.Stored{}, err
	}
	defer s.end()
	return s.read()
}

// Put appends ref to the pool; a recorded id changes nothing.
func (s *Store) Put(ctx context.Context, ref pool.Ref) error {
	if ref.ID == "" {
		return errors.New("filestore: put: empty sandbox id")
	}
	return s.update(ctx, func(st *pool.Stored) (bool, error) {
		for i := range st.Entries {
			if st.Entries[i].ID == ref.ID {
				return false, nil
			}
		}
		// Pool order is age: a sandbox that got ready later but expires
		// sooner (parallel creations finish out of order) goes before.
		at := len(st.Entries)
		for at > 0 && ref.ExpiresAt.Before(st.Entries[at-1].ExpiresAt) {
			at--
		}
		st.Entries = slices.Insert(st.Entries, at, pool.Entry{Ref: ref})
		return true, nil
	})
}

// Take drops the pooled head entries that expire before minExpiresAt and
// claims the first pooled one at or after it. Claimed entries are skipped,
// never dropped or taken.
func (s *Store) Take(ctx context.Context, tr pool.TakeRequest) (taken pool.Entry, dropped []pool.Entry, ok bool, err error) {
	if tr.ClaimedBy == "" {
		// An empty ClaimedBy would leave the entry pooled: it could be handed out again.
		return pool.Entry{}, nil, false, errors.New("filestore: take: empty claimer")
	}
	req := &takeReq{TakeRequest: tr, done: make(chan takeResult, 1), lead: make(chan struct{})}
	s.takes.Lock()
	s.takeQueue = append(s.takeQueue, req)
	leader := !s.takeLeading
	s.takeLeading = true
	s.takes.Unlock()
	if !leader {
		// Whatever ctx says, wait for the answer: a batch may already have
		// claimed an entry for this caller, and it must not be lost.
		select {
		case r := <-req.done:
			return r.taken, r.dropped, r.ok, r.err
		case <-req.lead:
		}
	}
	s.takeBatch(ctx)
	r := <-req.done
	return r.taken, r.dropped, r.ok, r.err
}

// takeReq is one Take waiting for a batch.
type takeReq struct {
	pool.TakeRequest
	done chan takeResult
	lead chan struct{} // closed when this request must run the next batch
}

type takeResult struct {
	taken   pool.Entry
	dropped []pool.Entry
	ok      bool
	err     error
}

// takeBatch serves every Take queued so far in one transaction: one lock,
// one read, one write and one fsync for all of them (group commit), so that
// concurrent claims do not queue behind each other's fsyncs. It then hands
// the lead to the oldest request that arrived meanwhile.
func (s *Store) takeBatch(ctx context.Context) {
	s.takes.Lock()
	batch := s.takeQueue
	s.takeQueue = nil
	s.takes.Unlock()

	// The batch serves other callers too: one caller's cancellation must not fail them.
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	results := make([]takeResult, len(batch))
	err := s.update(bctx, func(st *pool.Stored) (bool, error) {
		changed := false
		for i, req := range batch {
			r := &results[i]
			kept := st.Entries[:0]
			for j, e := range st.Entries {
				switch {
				case e.Claimed():
				case e.ExpiresAt.Before(req.MinExpiresAt):
					if req.KeepShort {
						break // a claimer skips it; the controller drops it
					}
					r.dropped = append(r.dropped, e)
					continue
				default:
					e.ClaimedBy, e.ClaimedAt = req.ClaimedBy, req.Now
					r.taken, r.ok = e, true
					kept = append(kept, e)
					kept = append(kept, st.Entries[j+1:]...)
					goto next
				}
				kept = append(kept, e)
			}
		next:
			st.Entries = kept
			changed = changed || r.ok || len(r.dropped) > 0
		}
		return changed, nil
	})
	cancel()
	for i, req := range batch {
		if err != nil {
			results[i] = takeResult{err: err}
		}
		req.done <- results[i]
	}

	s.takes.Lock()
	if len(s.takeQueue) > 0 {
		close(s.takeQueue[0].lead)
	} else {
		s.takeLeading = false
	}
	s.takes.Unlock()
}

func (s *Store) Remove(ctx context.Context, ids ...string) ([]pool.Entry, error) {
	return s.remove(ctx, false, ids)
}

// Evict deletes pooled entries by id; claimed ones are left alone.
func (s *Store) Evict(ctx context.Context, ids ...string) ([]pool.Entry, error) {
	return s.remove(ctx, true, ids)
}

func (s *Store) remove(ctx context.Context, pooledOnly bool, ids []string) ([]pool.Entry, error) {
	var removed []pool.Entry
	if len(ids) == 0 {
		return nil, nil
	}
	err := s.update(ctx, func(st *pool.Stored) (bool, error) {
		kept := st.Entries[:0]
	next:
		for _, e := range st.Entries {
			for _, id := range ids {
				if e.ID == id && !(pooledOnly && e.Claimed()) {
					removed = append(removed, e)
					continue next
				}
			}
			kept = append(kept, e)
		}
		st.Entries = kept
		return len(removed) > 0, nil
	})
	if err != nil {
		return nil, err
	}
	return removed, nil
}

// SetTiming stores the pool's ttl and use-duration.
func (s *Store) SetTiming(ctx context.Context, ttl, use time.Duration) error {
	if use <= 0 || ttl <= use {
		return fmt.Errorf("filestore: timing ttl %s use-duration %s: want 0 < use-duration < ttl", ttl, use)
	}
	return s.update(ctx, func(st *pool.Stored) (bool, error) {
		if st.TTL == ttl && st.UseDuration == use {
			return false, nil
		}
		st.TTL, st.UseDuration = ttl, use
		return true, nil
	})
}

// SetTarget stores the target n (0 or more).
func (s *Store) SetTarget(ctx context.Context, n int) error {
	if n < 0 {
		return fmt.Errorf("filestore: target %d: must be 0 or more", n)
	}
	return s.update(ctx, func(st *pool.Stored) (bool, error) {
		if st.HasTarget && st.Target == n {
			return false, nil
		}
		st.Target, st.HasTarget = n, true
		return true, nil
	})
}
